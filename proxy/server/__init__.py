"""The asyncio layer: sockets, TLS and timers around the sans-IO codec."""
