"""How Envoy forwards a peer certificate: URL-encoded PEM, and the XFCC header's ``Chain``.

Decoding runs only when a certificate is not already in the verified cache, so the hot path
never parses a multi-kilobyte header.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

__all__ = ["MAX_XFCC_BYTES", "chain_from_xfcc", "decode_certificate", "parse_xfcc", "split_pem_chain"]

MAX_XFCC_BYTES = 64 * 1024
_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----")
# One key=value pair; a value is either double-quoted (with \" escapes) or runs to the next ; or ,
_PAIR = re.compile(r'\s*([^=;,\s]*)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,]*)\s*([;,]|$)|[^;,]*([;,]|$)', re.DOTALL)


def parse_xfcc(value: str) -> list[dict[str, list[str]]]:
    """Split an ``x-forwarded-client-cert`` value into elements of ``key -> [values]``.

    Elements are separated by ``,``, pairs by ``;``, key and value by ``=``; a value may be
    double-quoted (then ``,``, ``;`` and ``=`` are literal and ``\\"`` is a quote). Keys are
    case-insensitive and returned lower-case. Pairs without ``=`` are ignored.
    """
    elements: list[dict[str, list[str]]] = []
    current: dict[str, list[str]] = {}
    pos = 0
    end = len(value)
    while pos < end:
        m = _PAIR.match(value, pos)
        if m is None or m.end() == pos:
            break
        pos = m.end()
        key, val, sep = m.group(1), m.group(2), m.group(3)
        if key is not None and key:
            val = val.strip()
            if len(val) >= 2 and val[0] == val[-1] == '"':
                val = val[1:-1].replace('\\"', '"')
            current.setdefault(key.lower(), []).append(val)
        else:
            sep = m.group(3) if key is not None else m.group(4)
        if sep == "," or pos >= end:
            if current:
                elements.append(current)
            current = {}
    if current:
        elements.append(current)
    return elements


def split_pem_chain(text: str) -> tuple[str, ...]:
    return tuple(m.group(0) for m in _PEM_CERT.finditer(text))


def chain_from_xfcc(value: str) -> tuple[str, ...]:
    """PEM certificates from the ``Chain`` of the last XFCC element (the Envoy in front of us)."""
    if not value or len(value) > MAX_XFCC_BYTES:
        return ()
    elements = parse_xfcc(value)
    if not elements:
        return ()
    # The last element was appended by the Envoy in front of us (SANITIZE_SET leaves only it).
    chains = elements[-1].get("chain", [])
    return split_pem_chain(unquote(chains[-1])) if chains else ()


def decode_certificate(encoded: str) -> str:
    """``source.certificate`` is URL-encoded PEM (``%0A``, ``%20``, ``%2B``, ``%2F``, ``%3D``)."""
    return unquote(encoded)
