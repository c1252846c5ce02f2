"""Use cases (fraud, monitoring-metrics, monitoring-logs, video), their specs and generators, and the CLI."""
