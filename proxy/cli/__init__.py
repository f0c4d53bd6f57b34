"""The ``tenant-proxy`` command line."""
