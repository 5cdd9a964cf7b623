"""How Envoy forwards a peer certificate: URL-encoded PEM, and the XFCC header's ``Chain``.

Both parsers are single left-to-right scans: their cost is linear in the input, whatever it holds.
Decoding runs only when a certificate is not already in the verified cache, so the hot path never
parses a multi-kilobyte header.
"""

from __future__ import annotations

import re

from ..errors import Error
from ..settings import MAX_XFCC_BYTES

__all__ = [
    "MAX_XFCC_BYTES",
    "MultipleCertificates",
    "XfccTooComplex",
    "chain_from_xfcc",
    "decode_certificate",
    "parse_xfcc",
    "split_pem_chain",
    "unquote_pem",
]

_BEGIN = "-----BEGIN CERTIFICATE-----"
_END = "-----END CERTIFICATE-----"
_STRUCTURE = ('"', ";", ",", "=", "\\")
_STRUCTURE_RE = re.compile(r'[";,=\\]')
MAX_XFCC_STRUCTURE = 512  # Envoy writes a handful per element; a Subject DN adds a few dozen
_BASE64 = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/= \t\r\n")


class MultipleCertificates(Error, ValueError):
    """``source.certificate`` must hold exactly one certificate, the peer's leaf."""


class XfccTooComplex(Error, ValueError):
    """An XFCC header with more structure than any Envoy writes (fields, quotes, escapes)."""


def parse_xfcc(value: str) -> list[dict[str, list[str]]]:
    """Split an ``x-forwarded-client-cert`` value into elements of ``key -> [values]``.

    Elements are separated by ``,``, pairs by ``;``, key and value by ``=``; a value may be
    double-quoted (then ``,``, ``;`` and ``=`` are literal and ``\\"`` is a quote). Keys are
    case-insensitive and returned lower-case. Pairs without ``=`` are ignored.

    The scan jumps from one structural character to the next (found in C); a header with more than
    MAX_XFCC_STRUCTURE of them raises XfccTooComplex before any is looked at, so the Python-level work
    is bounded whatever the header holds.
    """
    if sum(value.count(c) for c in _STRUCTURE) > MAX_XFCC_STRUCTURE:
        raise XfccTooComplex(f"more than {MAX_XFCC_STRUCTURE} separators, quotes or escapes")
    elements: list[dict[str, list[str]]] = []
    current: dict[str, list[str]] = {}
    key = ""
    parts: list[str] = []  # the value so far
    in_value = quoted = was_quoted = False
    pos = 0

    def finish_pair() -> None:
        name = key.strip().lower()
        if in_value and name and not any(c.isspace() for c in name):
            text = "".join(parts)
            current.setdefault(name, []).append(text if was_quoted else text.strip())

    for m in _STRUCTURE_RE.finditer(value):
        i = m.start()
        if i < pos:  # the character after a backslash, already taken
            continue
        c = value[i]
        chunk = value[pos:i]
        if quoted:
            parts.append(chunk)
            if c == "\\":
                nxt = value[i + 1 : i + 2]
                parts.append(nxt if nxt == '"' else "\\" + nxt)
                pos = i + 2
                continue
            if c == '"':
                quoted = False
            else:
                parts.append(c)
            pos = i + 1
            continue
        if not in_value:
            if c == "=":
                key += chunk
                in_value = True
            elif c in ";,":
                key = ""
                if c == "," and current:
                    elements.append(current)
                    current = {}
            else:  # a quote or backslash in a key: part of a (bad) key
                key += chunk + c
            pos = i + 1
            continue
        if c == '"' and not (parts or chunk.strip()):
            quoted = was_quoted = True
        elif c in ";,":
            parts.append(chunk)
            finish_pair()
            key, parts, in_value, was_quoted = "", [], False, False
            if c == "," and current:
                elements.append(current)
                current = {}
        else:
            parts.append(chunk + c)
        pos = i + 1
    if in_value:
        parts.append(value[pos:])
        finish_pair()
    if current:
        elements.append(current)
    return elements


# What Envoy percent-encodes in a PEM (its characters are base64, newline, space, '-' and '='), and '%'
# itself. Decoded with str.replace, in C: a header of nothing but escapes costs a few passes over it,
# not a Python-level step per escape as urllib's unquote takes.
_PEM_ESCAPES = tuple((f"%{ord(c):02X}", f"%{ord(c):02x}", c) for c in '\n\r \t+/=-:,;"')


def unquote_pem(text: str) -> str:
    """Percent-decoding for PEM text as Envoy encodes it; other escapes are left as they are (a PEM
    holding one is not a certificate)."""
    if "%" not in text:
        return text
    for upper, lower, char in _PEM_ESCAPES:
        if upper in text or lower in text:
            text = text.replace(upper, char).replace(lower, char)
    return text.replace("%25", "%")


def split_pem_chain(text: str) -> tuple[str, ...]:
    """The PEM certificate blocks in ``text``, in order (a block whose body is not base64 is skipped)."""
    out: list[str] = []
    pos = 0
    while True:
        start = text.find(_BEGIN, pos)
        if start < 0:
            break
        end = text.find(_END, start + len(_BEGIN))
        if end < 0:
            break
        body = text[start + len(_BEGIN) : end]
        pos = end + len(_END)
        if body.strip() and set(body) <= _BASE64:
            out.append(text[start:pos])
    return tuple(out)


def chain_from_xfcc(value: str) -> tuple[str, ...]:
    """PEM certificates from the ``Chain`` of the last XFCC element (the Envoy in front of us)."""
    if not value or len(value) > MAX_XFCC_BYTES:
        return ()
    elements = parse_xfcc(value)
    if not elements:
        return ()
    # The last element was appended by the Envoy in front of us (SANITIZE_SET leaves only it).
    chains = elements[-1].get("chain", [])
    return split_pem_chain(unquote_pem(chains[-1])) if chains else ()


def decode_certificate(encoded: str) -> str:
    """``source.certificate`` is the peer's leaf, URL-encoded PEM (``%0A``, ``%20``, ``%2B``, ``%2F``,
    ``%3D``). Anything but exactly one certificate raises MultipleCertificates."""
    pem = unquote_pem(encoded)
    if pem.count(_BEGIN) != 1 or pem.count(_END) != 1:
        raise MultipleCertificates(f"source.certificate holds {pem.count(_BEGIN)} certificates; expected 1")
    blocks = split_pem_chain(pem)
    if len(blocks) != 1 or pem.strip() != blocks[0]:
        raise MultipleCertificates("source.certificate holds more than one PEM certificate block")
    return blocks[0]
