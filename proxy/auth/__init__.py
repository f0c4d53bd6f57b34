"""Password authentication: SCRAM-SHA-256 (both sides) and md5 (upstream only)."""
