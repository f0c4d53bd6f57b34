"""Logs (and, later, metrics and the audit trail)."""
