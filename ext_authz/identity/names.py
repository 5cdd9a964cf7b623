"""Certificate names and serials as operators type them, in one canonical form.

A certificate revocation may name a certificate by ``SERIAL@ISSUER``. Operators copy the issuer from
wherever they have it: RFC 4514 (``CN=Intermediate,O=Example,C=US``, what most libraries print),
OpenSSL's default one-line form (``issuer=C = US, O = Example, CN = Intermediate``) or its older slash
form (``/C=US/O=Example/CN=Intermediate``), and the serial in hex with or without colons
(``0A:1B:…``, ``0x0a1b…``). All of them are parsed into one canonical text, and the certificate's own
issuer is put into the same form, so a revocation matches however it was typed. Text that does not
parse is refused with one line saying why: a revocation that silently matches nothing is worse than
none.

The canonical form compares values case-insensitively with runs of whitespace folded (as RFC 5280's
name matching does), and does not depend on the order of the RDNs (RFC 4514 lists them last-first,
OpenSSL first-last). Folding can only make a revocation match more, never less.
"""

from __future__ import annotations

from cryptography import x509

from ..errors import Error

__all__ = ["NameError_", "canonical_name", "parse_name", "parse_serial"]

_MAX_SERIAL_HEX = 40  # RFC 5280: at most 20 octets

# Attribute types by the names RFC 4514, OpenSSL and cryptography print them under.
_TYPES: dict[str, str] = {
    "CN": "2.5.4.3",
    "SN": "2.5.4.4",
    "SERIALNUMBER": "2.5.4.5",
    "C": "2.5.4.6",
    "L": "2.5.4.7",
    "ST": "2.5.4.8",
    "S": "2.5.4.8",
    "STREET": "2.5.4.9",
    "O": "2.5.4.10",
    "OU": "2.5.4.11",
    "TITLE": "2.5.4.12",
    "POSTALCODE": "2.5.4.17",
    "NAME": "2.5.4.41",
    "GN": "2.5.4.42",
    "GIVENNAME": "2.5.4.42",
    "INITIALS": "2.5.4.43",
    "GENERATIONQUALIFIER": "2.5.4.44",
    "DNQUALIFIER": "2.5.4.46",
    "PSEUDONYM": "2.5.4.65",
    "DC": "0.9.2342.19200300.100.1.25",
    "UID": "0.9.2342.19200300.100.1.1",
    "EMAILADDRESS": "1.2.840.113549.1.9.1",
    "EMAIL": "1.2.840.113549.1.9.1",
    "E": "1.2.840.113549.1.9.1",
}
_SHORT = {
    "2.5.4.3": "CN",
    "2.5.4.4": "SN",
    "2.5.4.5": "serialNumber",
    "2.5.4.6": "C",
    "2.5.4.7": "L",
    "2.5.4.8": "ST",
    "2.5.4.9": "STREET",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
    "2.5.4.12": "title",
    "2.5.4.42": "GN",
    "0.9.2342.19200300.100.1.25": "DC",
    "0.9.2342.19200300.100.1.1": "UID",
    "1.2.840.113549.1.9.1": "emailAddress",
}
_HEX = frozenset("0123456789abcdef")


class NameError_(Error, ValueError):
    """A name or serial that does not parse; the message says what was expected."""


def _fold(value: str) -> str:
    return " ".join(value.split()).casefold()


def _escape(value: str) -> str:
    out = []
    for c in value:
        if c in ',+=\\"<>;#':
            out.append("\\")
        out.append(c)
    return "".join(out)


def _canonical(rdns: list[list[tuple[str, str]]]) -> str:
    parts = []
    for rdn in rdns:
        avas = sorted(f"{_SHORT.get(oid, oid)}={_escape(_fold(value))}" for oid, value in rdn)
        parts.append("+".join(avas))
    return ",".join(sorted(parts))


def canonical_name(name: x509.Name) -> str:
    """A certificate's name in the canonical form revocations are compared in."""
    rdns = [
        [(a.oid.dotted_string, a.value if isinstance(a.value, str) else a.value.hex()) for a in rdn]
        for rdn in name.rdns
    ]
    return _canonical(rdns)


def _type(text: str, whole: str) -> str:
    name = text.strip()
    if not name:
        raise NameError_(f"an attribute without a type in {whole!r}")
    if name[0].isdigit():
        if not all(part.isdigit() for part in name.split(".")) or name.count(".") < 1:
            raise NameError_(f"{name!r} is not an attribute type (e.g. CN, O, C, or a dotted OID)")
        return name
    oid = _TYPES.get(name.upper())
    if oid is None:
        raise NameError_(f"unknown attribute type {name!r} (known: CN, O, OU, C, L, ST, DC, emailAddress, …)")
    return oid


def _split(text: str, seps: str, whole: str) -> list[tuple[str, str]]:
    """Split ``text`` at unescaped separator characters: [(part, separator that ended it)]."""
    out: list[tuple[str, str]] = []
    buf: list[str] = []
    quoted = False
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            if i + 1 >= len(text):
                raise NameError_(f"a trailing backslash in {whole!r}")
            buf.append(text[i : i + 2])
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        if c in seps and not quoted:
            out.append(("".join(buf), c))
            buf = []
        else:
            buf.append(c)
        i += 1
    if quoted:
        raise NameError_(f"an unclosed quote in {whole!r}")
    out.append(("".join(buf), ""))
    return out


def _unescape(value: str, whole: str) -> str:
    value = value.strip()
    if value.startswith("#"):
        raise NameError_(f"hex-encoded values (#…) are not supported in {whole!r}: give the text")
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    out = bytearray()
    i = 0
    while i < len(value):
        c = value[i]
        if c == "\\":
            pair = value[i + 1 : i + 3]
            if len(pair) == 2 and all(ch in "0123456789abcdefABCDEF" for ch in pair):
                out.append(int(pair, 16))
                i += 3
                continue
            out.extend(value[i + 1].encode())
            i += 2
            continue
        out.extend(c.encode())
        i += 1
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NameError_(f"an escaped value in {whole!r} is not UTF-8") from exc


def _rdns(text: str, rdn_seps: str, whole: str) -> list[list[tuple[str, str]]]:
    rdns: list[list[tuple[str, str]]] = []
    for rdn_text, _ in _split(text, rdn_seps, whole):
        if not rdn_text.strip():
            raise NameError_(f"an empty name component in {whole!r}")
        rdn: list[tuple[str, str]] = []
        for ava, _ in _split(rdn_text, "+", whole):
            typ, eq, value = ava.partition("=")
            if not eq:
                raise NameError_(f"{ava.strip()!r} in {whole!r} is not TYPE=VALUE")
            rdn.append((_type(typ, whole), _unescape(value, whole)))
        rdns.append(rdn)
    return rdns


def parse_name(text: str) -> str:
    """An issuer or subject name, as RFC 4514, OpenSSL one-line or slash form → canonical text."""
    whole = text
    text = text.strip()
    for prefix in ("issuer=", "subject="):
        if text.lower().startswith(prefix):
            text = text[len(prefix) :].strip()
    if not text:
        raise NameError_("an empty name")
    slash = text.startswith("/")  # OpenSSL's old form: /C=US/O=Example/CN=Intermediate
    return _canonical(_rdns(text[1:], "/", whole) if slash else _rdns(text, ",;", whole))


def parse_serial(text: str) -> str:
    """A certificate serial in hex (``0A:1B``, ``0x0a1b``, ``serial=0A1B``) → lower-case hex without
    leading zeros."""
    value = text.strip().lower()
    if value.startswith("serial="):
        value = value[len("serial=") :]
    if value.startswith("0x"):
        value = value[2:]
    value = value.replace(":", "")
    if not value or not set(value) <= _HEX:
        raise NameError_(f"a serial is hexadecimal (e.g. 0A:1B:2C or 0a1b2c), got {text.strip()!r}")
    if len(value) > _MAX_SERIAL_HEX:
        raise NameError_("a certificate serial has at most 20 octets")
    return value.lstrip("0") or "0"
