"""Training jobs (Keras CNN, Spark ML) that log to MLflow and register the models."""
