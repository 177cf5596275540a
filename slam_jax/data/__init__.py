"""Data: the unit store, ingestion of the reference formats, Grain pipelines, a synthetic corpus."""
