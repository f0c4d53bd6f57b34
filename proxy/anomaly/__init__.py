"""Anomaly scoring of statements: feature layout, Half-Space Trees model, baselines, detector."""
