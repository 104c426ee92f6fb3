"""Monitoring: per-window metrics, drift tests, label-free accuracy, alerts, dashboards; pandas and Spark engines."""
