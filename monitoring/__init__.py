"""Monitoring: per-window metrics, drift tests, label-free accuracy, alerts, dashboards (not built yet)."""
