"""Column encryption: ciphertext formats, per-tenant data keys and value codecs.

Data flows one way: ``values`` turns what a client sent (a literal, a bind
parameter in text or binary, a COPY field) into a canonical plaintext,
``cipher`` seals it under the tenant's current data key with associated data
naming tenant, table and column, and the reverse path opens it and renders it
in the format the client asked for. ``keyring`` is the synchronous view of the
tenant keys the pipeline uses; ``keystore`` keeps them, wrapped by the master
key, in a proxy-owned table of the database itself.
"""
