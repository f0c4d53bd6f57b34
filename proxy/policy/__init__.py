"""Tenant policy: rules files, tenant identity and tokens."""
