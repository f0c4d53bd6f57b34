"""Proxy settings: listen address, upstream, client auth, TLS and limits."""
