"""Developer tooling, not part of the product: the team stack on one machine, helper processes, Azurite."""
