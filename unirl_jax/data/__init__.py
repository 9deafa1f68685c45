"""Data: prompt formats, records (JSONL / parquet) with clear errors, and grain pipelines."""
