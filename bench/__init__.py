"""Benchmarks with recorded results; never part of the test run."""
