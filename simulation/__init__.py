"""Simulation: scenarios of foreign-digit traffic sent to the served model (not built yet)."""
