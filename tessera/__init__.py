"""Tessera: a sans-I/O core for admitting new network devices and keying the links between them.

The protocol lives in this package (identity, service keys, tickets, messages, the service's
decisions, the device's and the peer handshake's state machines, the record layer). Nothing
here opens a socket or reads a clock: bytes, `now` and random bytes go in, bytes and events
come out. Adapters (plugin/, radius/, agent/, lab/) do the I/O.
"""

__version__ = "0.1.0"
