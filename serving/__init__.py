"""Serving: one scoring core behind Azure ML's score.py and an HTTP server, and the prediction log."""
