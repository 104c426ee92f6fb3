"""Azure ML: job, environment, compute and endpoint specs and their submission (not built yet)."""
