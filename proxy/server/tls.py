"""SSL contexts for the client side (termination) and the upstream side."""

from __future__ import annotations

import ssl

from proxy.config.settings import ClientTLS


def client_side_context(tls: ClientTLS) -> ssl.SSLContext | None:
    """The context clients handshake with; ``client_ca`` turns on certificate checks."""
    if tls.mode == "disable" or not tls.cert or not tls.key:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls.cert, tls.key)
    if tls.client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(tls.client_ca)
    return ctx


def upstream_context(sslmode: str, sslrootcert: str | None) -> ssl.SSLContext | None:
    """libpq's sslmode semantics: require encrypts without checking the server,
    verify-ca checks the chain, verify-full also checks the host name."""
    if sslmode == "disable":
        return None
    if sslmode in ("prefer", "require"):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    ctx = ssl.create_default_context(cafile=sslrootcert)
    ctx.check_hostname = sslmode == "verify-full"
    return ctx
