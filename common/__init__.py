"""Contracts every part of digitdrift shares: images, datasets, records, settings, MLflow and Spark plumbing."""
