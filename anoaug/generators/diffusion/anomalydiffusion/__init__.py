"""The `anomalydiffusion` generator (AnomalyDiffusion: anomaly + spatial embeddings, attention re-weighting)."""
