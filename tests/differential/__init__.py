"""The differential fuzzer: statement generator, runner against PostgreSQL RLS, report."""
