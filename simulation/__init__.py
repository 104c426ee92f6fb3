"""Simulation: scenarios of foreign-digit traffic sent to the served model, and the ground-truth sidecar."""
