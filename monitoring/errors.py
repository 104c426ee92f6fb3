"""The monitoring part's one error: what cannot be monitored, with how to fix it."""


class MonitoringError(RuntimeError):
    """A log or reference that cannot be monitored; the message says what and how to fix it."""
