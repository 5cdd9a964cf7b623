"""SPIFFE IDs and trust domains, parsed exactly as ``standards/SPIFFE-ID.md`` says.

The rules follow the SPIFFE-ID standard and behave like go-spiffe's ``spiffeid`` package:

- the scheme is exactly ``spiffe://`` (lowercase, nothing is case-folded);
- the trust domain name uses only ``a-z 0-9 . - _`` and is at most 255 bytes long (the length limit
  comes from the standard; go-spiffe does not check it);
- the path is empty or a series of ``/segment`` parts, each segment made of ``A-Z a-z 0-9 . - _``
  and none of them empty, ``.`` or ``..``;
- there is no userinfo, port, query, fragment or percent-encoding: the characters that would
  introduce them (``@ : ? # %``) are simply not allowed.

A value that exists is valid: ``TrustDomain`` and ``SpiffeId`` check their fields when they are
built, whichever way they are built. Parsing does one precompiled regular-expression match per part
on success; the slower, precise diagnosis only runs to word an error.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from .errors import Error

__all__ = [
    "MAX_TRUST_DOMAIN_BYTES",
    "Matcher",
    "SpiffeId",
    "SpiffeIdError",
    "TrustDomain",
    "match_any",
    "match_id",
    "match_member_of",
    "match_one_of",
    "validate_path",
    "validate_path_segment",
]

_SCHEME = "spiffe://"
_PREFIX_LEN = len(_SCHEME)

MAX_TRUST_DOMAIN_BYTES = 255
"""SPIFFE-ID.md §2.3: a trust domain name is at most 255 bytes."""

# Explicit ASCII ranges: without IGNORECASE, ``[a-z]`` never matches a non-ASCII letter.
# Always used with ``fullmatch`` (``$`` would accept a trailing newline).
_TRUST_DOMAIN_RE = re.compile(r"[a-z0-9._\-]+")
_SEGMENT_RE = re.compile(r"[A-Za-z0-9._\-]+")
# A whole valid path: zero or more "/segment" parts, none of which is "." or "..".
_PATH_RE = re.compile(r"(?:/(?!\.\.?(?:/|\Z))[A-Za-z0-9._\-]+)*")

_TRUST_DOMAIN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-_")
_SEGMENT_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-_")


class SpiffeIdError(Error, ValueError):
    """A SPIFFE ID, trust domain name, path or path segment breaks the SPIFFE-ID standard.

    The message says which rule was broken and, for a bad character, which character and where.
    It never repeats the whole input, which may be long and is caller-controlled.
    """


# ---------------------------------------------------------------------------------------------------
# Error wording (slow path only)


def _first_bad_char(text: str, allowed: frozenset[str]) -> tuple[int, str]:
    for index, char in enumerate(text):
        if char not in allowed:
            return index, char
    raise AssertionError("no disallowed character")  # pragma: no cover - callers checked first


def _trust_domain_error(name: str) -> SpiffeIdError:
    if not name:
        return SpiffeIdError("trust domain is missing")
    if not _TRUST_DOMAIN_RE.fullmatch(name):
        index, char = _first_bad_char(name, _TRUST_DOMAIN_CHARS)
        return SpiffeIdError(
            f"trust domain name has the character {char!r} at position {index}; only lowercase "
            "letters a-z, digits 0-9, '.', '-' and '_' are allowed"
        )
    return SpiffeIdError(
        f"trust domain name is {len(name)} bytes long; the maximum is {MAX_TRUST_DOMAIN_BYTES}"
    )


def _segment_error(segment: str, offset: int) -> SpiffeIdError:
    """Word the error for one invalid path segment; ``offset`` is where it starts in its path."""
    if not segment:
        return SpiffeIdError("path segment is empty")
    if segment in (".", ".."):
        return SpiffeIdError(f"path segment {segment!r} is not allowed ('.' and '..' are never valid)")
    index, char = _first_bad_char(segment, _SEGMENT_CHARS)
    return SpiffeIdError(
        f"path segment has the character {char!r} at position {offset + index}; only letters, "
        "digits, '.', '-' and '_' are allowed"
    )


def _path_error(path: str) -> SpiffeIdError:
    """Find the first rule that ``path`` (known to be invalid) breaks, scanning left to right."""
    if not path.startswith("/"):
        return SpiffeIdError("path must start with '/' (or be empty)")
    segments = path.split("/")
    offset = 1
    last = len(segments) - 1
    for number, segment in enumerate(segments[1:], start=1):
        if not segment:
            if number == last:
                return SpiffeIdError("path must not end with '/'")
            return SpiffeIdError(f"path has an empty segment ('//') at position {offset - 1}")
        if not segment or segment in (".", "..") or not _SEGMENT_RE.fullmatch(segment):
            return _segment_error(segment, offset)
        offset += len(segment) + 1
    raise AssertionError("path is valid")  # pragma: no cover - callers checked first


# ---------------------------------------------------------------------------------------------------
# Validation


def _check_trust_domain_name(name: str) -> None:
    # Only ASCII characters pass the regex, so the length in characters is the length in bytes.
    if not _TRUST_DOMAIN_RE.fullmatch(name) or len(name) > MAX_TRUST_DOMAIN_BYTES:
        raise _trust_domain_error(name)


def validate_path(path: str) -> None:
    """Check a SPIFFE ID path. The empty path is valid; otherwise it is ``/seg`` repeated.

    Raises ``SpiffeIdError`` naming the first broken rule.
    """
    if not _PATH_RE.fullmatch(path):
        raise _path_error(path)


def validate_path_segment(segment: str) -> None:
    """Check one path segment (no slashes): non-empty, not ``.``/``..``, only ``A-Za-z0-9._-``.

    Raises ``SpiffeIdError`` naming the broken rule.
    """
    if not _SEGMENT_RE.fullmatch(segment) or segment in (".", ".."):
        raise _segment_error(segment, 0)


# ---------------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True, slots=True)
class TrustDomain:
    """A SPIFFE trust domain name such as ``example.org``. Always valid once built."""

    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f"trust domain name must be a str, not {type(self.name).__name__}")
        _check_trust_domain_name(self.name)

    @classmethod
    def parse(cls, text: str) -> TrustDomain:
        """Parse a bare trust domain name, or take the trust domain of a full SPIFFE ID.

        Like go-spiffe, text containing ``:/`` is treated as a SPIFFE ID and validated in full,
        path included; anything else must be a bare name.
        """
        if not text:
            raise SpiffeIdError("trust domain is missing")
        if ":/" in text:
            return SpiffeId.parse(text).trust_domain
        return cls(text)

    def id_string(self) -> str:
        """The SPIFFE ID of the trust domain itself: ``spiffe://<name>``."""
        return _SCHEME + self.name

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A SPIFFE ID: a trust domain plus a path (``""`` or ``/seg/...``). Always valid once built."""

    trust_domain: TrustDomain
    path: str

    def __post_init__(self) -> None:
        if not isinstance(self.trust_domain, TrustDomain):
            raise TypeError(f"trust_domain must be a TrustDomain, not {type(self.trust_domain).__name__}")
        if not isinstance(self.path, str):
            raise TypeError(f"path must be a str, not {type(self.path).__name__}")
        validate_path(self.path)

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        """Parse ``spiffe://<trust domain><path>`` strictly; raise ``SpiffeIdError`` if invalid."""
        if not text:
            raise SpiffeIdError("SPIFFE ID is empty")
        if not text.startswith(_SCHEME):
            raise SpiffeIdError("SPIFFE ID must start with the scheme 'spiffe://' (lowercase)")
        slash = text.find("/", _PREFIX_LEN)
        if slash < 0:
            return cls(TrustDomain(text[_PREFIX_LEN:]), "")
        return cls(TrustDomain(text[_PREFIX_LEN:slash]), text[slash:])

    @classmethod
    def from_segments(cls, td: TrustDomain, segments: Sequence[str]) -> SpiffeId:
        """Build the ID ``spiffe://<td>/<seg1>/<seg2>...``; no segments gives the empty path."""
        if isinstance(segments, str):
            raise TypeError("segments must be a sequence of strings, not a single str")
        for segment in segments:
            validate_path_segment(segment)
        return cls(td, "".join("/" + segment for segment in segments))

    @property
    def segments(self) -> tuple[str, ...]:
        """The path segments, without slashes; ``()`` for the empty path."""
        if not self.path:
            return ()
        return tuple(self.path[1:].split("/"))

    def member_of(self, td: TrustDomain) -> bool:
        """Whether this ID belongs to trust domain ``td``."""
        return self.trust_domain == td

    def __str__(self) -> str:
        return _SCHEME + self.trust_domain.name + self.path


# ---------------------------------------------------------------------------------------------------
# Matchers

Matcher: TypeAlias = Callable[[SpiffeId | None], bool]
"""Decides whether an ID is acceptable. ``None`` stands for "no ID" (go-spiffe's zero ID)."""


def match_any() -> Matcher:
    """Accept every ID, and also the absence of one."""

    def matcher(actual: SpiffeId | None) -> bool:
        return True

    return matcher


def match_id(id: SpiffeId) -> Matcher:
    """Accept exactly ``id``; never the absence of an ID."""
    expected = id

    def matcher(actual: SpiffeId | None) -> bool:
        return actual is not None and actual == expected

    return matcher


def match_one_of(*ids: SpiffeId) -> Matcher:
    """Accept any of ``ids``; with no ids nothing is accepted, and never the absence of an ID."""
    allowed = frozenset(ids)

    def matcher(actual: SpiffeId | None) -> bool:
        return actual is not None and actual in allowed

    return matcher


def match_member_of(td: TrustDomain | None) -> Matcher:
    """Accept any ID in trust domain ``td``.

    ``None`` is the zero trust domain: as in go-spiffe, it matches only the absence of an ID and no
    actual ID. A real trust domain never matches the absence of an ID.
    """
    if td is None:

        def matches_none(actual: SpiffeId | None) -> bool:
            return actual is None

        return matches_none

    def matcher(actual: SpiffeId | None) -> bool:
        return actual is not None and actual.trust_domain == td

    return matcher


def workload_id(text: str) -> SpiffeId:
    """A workload's SPIFFE ID: a valid one with a path (a trust domain alone names no workload).
    SpiffeIdError otherwise. The one place that says so, for settings, state and verifiers."""
    sid = SpiffeId.parse(text)
    if not sid.path:
        raise SpiffeIdError("it names a trust domain, not a workload (it has no path)")
    return sid
