"""I/O edges: Kafka I/O, Ray scoring workers and coordinator, checkpoints, Ray Train loop, MLflow registry."""
