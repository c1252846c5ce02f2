"""Batch jobs: training on the archive (Ray Train + MLflow), archive backfill, model review and backtest."""
