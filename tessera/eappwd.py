"""The EAP-PWD password as both peers hand it to RFC 5931: bytes no debug log can print.

How this works: the realm's EAP-PWD password is the 64-character hex string of
docs/layouts.md (`service.eap_pwd_password`, derived from the LLK on both sides). What the
RADIUS server returns to ``rlm_eap_pwd`` and what the supplicant is configured with is its
*wire form*: every byte ``b`` of the password's UTF-8 becomes the two bytes ``0x80 | b >> 4``
and ``0x80 | b & 15``. Nothing is lost (it is hex with the top bit set) and EAP-PWD takes any
bytes as a password.

Why: FreeRADIUS 3.2.1's rlm_python3 prints every attribute a module returns at debug level 1
(``mod_vptuple``: ``authorize - 'config:Cleartext-Password' = '…'``), whatever
``suppress_secrets`` says -- 3.2.1 honours it only where it prints a pair with ``rdebug_pair``
(and in rlm_perl), and its dictionary does not even flag Cleartext-Password secret (both fixed
upstream in 3.2.9). Every other way to put the password where rlm_eap_pwd reads it (unlang
``update``, xlat expansion) prints the value too. What FreeRADIUS's logger does do (``vradlog`` in ``src/main/log.c``) is replace each byte
that does not begin a valid UTF-8 character with ``?``: bytes 0x80-0x8F are continuation bytes
without a lead, so the debug line reads ``'????…'`` and carries nothing. (At ``-Xxx``, debug
level 4, rlm_eap_pwd prints the password in hex by FreeRADIUS's own design: it shows secrets
from level 3 on.) ``tests/server/test_debug_output.py`` holds a real ``freeradius -X`` to this.

wpa_supplicant reads a password given as unquoted hex as those bytes (``password=8f8a…``), in
its configuration file and in ``SET_NETWORK`` alike: `supplicant_value`.
"""

from __future__ import annotations


def wire(password: str) -> bytes:
    """The bytes both EAP-PWD peers use for `password`: each UTF-8 byte as two bytes 0x80-0x8F."""
    out = bytearray()
    for b in password.encode():
        out += bytes((0x80 | b >> 4, 0x80 | b & 0x0F))
    return bytes(out)


def supplicant_value(password: str) -> str:
    """wpa_supplicant's ``password=`` value for `password` (unquoted hex of the wire form)."""
    return wire(password).hex()
