"""Tessera: a sans-I/O core for admitting new network devices and keying the links between them.

The protocol lives in this package (identity, service keys, tickets, messages, the service's
decisions, the device's, the agent's and the peer handshake's state machines, the record
layer). None of those modules opens a socket or reads a clock: bytes, `now` and random bytes go
in, bytes and events come out. A few thin modules here do touch the outside, and only they:
`sqlite_registry` and `pg_registry` (the registry's storage, opened by URL through
`registry_url`), `cli` (tessera-admin) and `demo` (the one-process demo), plus
`realm.open_realm`, which reads the KEK file. The other adapters (plugin/, radius/,
agent/, lab/) do the rest of the I/O.
"""

__version__ = "0.1.0"
