"""Use cases (fraud, monitoring-metrics, monitoring-logs, video): their specs, schemas and generators."""
