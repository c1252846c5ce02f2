"""Own-data tools: read a CSV/Parquet file, fit a model to it (``fit-file``), score it (``score-file``)."""
