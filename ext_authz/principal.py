"""Principal keys: how state names whom it is about, exactly.

- A workload is its SPIFFE ID: ``spiffe://example.org/ns/web/sa/app``.
- A user is the issuer of its token and the subject within that issuer: ``ISSUER#SUBJECT``, for example
  ``https://idp.example.com#alice``. An issuer never contains ``#`` (the config refuses one that does;
  OpenID issuers have no fragment), so the first ``#`` splits the two, and the subject is the rest.

A bare subject is never a key: ``alice`` of one issuer is not ``alice`` of another. The same spelling is
used by revocations (``sub``), grants, exceptions, user signals, quarantine, the admin API, the CLI, the
decision log and every store.

Token-scoped values (a ``jti`` or a session ``sid``) are named the same way, with the token's issuer in
front: ``https://idp.example.com#sess-1``; for a JWT-SVID the issuer part is its trust domain,
``spiffe://example.org#4f2c…``.
"""

from __future__ import annotations

import re

from .errors import Error
from .spiffe_id import SpiffeId, SpiffeIdError, workload_id

__all__ = ["PrincipalError", "parse_principal", "parse_scoped", "user_key", "workload_scope"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_EXAMPLE = "https://idp.example.com#alice"


class PrincipalError(Error, ValueError):
    """Text that does not name a principal; the message says how to write one."""


def user_key(issuer: str, subject: str) -> str:
    return f"{issuer}#{subject}"


def workload_scope(trust_domain: str) -> str:
    """The issuer part of a JWT-SVID's token-scoped values: its trust domain."""
    return f"spiffe://{trust_domain}"


_SPACE = re.compile(r"\s")


def _issuer_and_value(text: str, what: str) -> tuple[str, str]:
    issuer, sep, value = text.partition("#")
    if not sep or not issuer or not value:
        raise PrincipalError(f"{what} is named with its issuer: ISSUER#VALUE, e.g. {_EXAMPLE}")
    if _SPACE.search(issuer):
        raise PrincipalError(f"the issuer in {text!r} contains whitespace")
    if _CONTROL.search(value):
        raise PrincipalError(f"{what} contains control characters")
    return issuer, value


def parse_principal(text: str) -> str:
    """A principal key in canonical form, or PrincipalError saying how to write one."""
    text = text.strip()
    if not text:
        raise PrincipalError(f"a principal is required: a SPIFFE ID, or ISSUER#SUBJECT such as {_EXAMPLE}")
    if text.startswith("spiffe://") and "#" not in text:
        try:
            return str(workload_id(text))
        except SpiffeIdError as exc:
            raise PrincipalError(f"not a workload's SPIFFE ID: {exc}") from exc
    if "#" not in text:
        raise PrincipalError(
            f"{text!r} is ambiguous: name a user with its token issuer, ISSUER#SUBJECT (e.g. {_EXAMPLE}),"
            " or a workload by its SPIFFE ID"
        )
    issuer, subject = _issuer_and_value(text, "a user")
    if issuer.startswith("spiffe://"):
        raise PrincipalError(f"{text!r}: a workload is named by its SPIFFE ID alone")
    return user_key(issuer, subject)


def parse_scoped(text: str, what: str) -> str:
    """A token-scoped value (``jti``, ``sid``) as ``ISSUER#VALUE``, canonical."""
    issuer, value = _issuer_and_value(text.strip(), what)
    if issuer.startswith("spiffe://"):
        try:
            sid = SpiffeId.parse(issuer)
        except SpiffeIdError as exc:
            raise PrincipalError(f"not a valid trust domain: {exc}") from exc
        if sid.path:
            raise PrincipalError(
                f"{what} of a JWT-SVID is scoped by its trust domain: spiffe://TRUST-DOMAIN#VALUE"
            )
        issuer = str(sid)
    return f"{issuer}#{value}"
