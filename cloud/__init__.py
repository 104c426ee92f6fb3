"""Azure ML: job, environment, compute and endpoint specs and their submission; the only part that imports azure.*."""
