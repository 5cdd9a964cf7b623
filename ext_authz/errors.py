"""One error root. Every denial and fault carries a machine-readable ``reason`` code.

The same code is the metric label, the decision-log field and the ``x-ext-authz-reason``
header on denials. Messages (``detail``) are for logs only and never reach a client.
"""

from __future__ import annotations

__all__ = [
    "REASON_STATUS",
    "AuthzError",
    "ConfigError",
    "CredentialError",
    "Error",
    "StateError",
    "TrustError",
    "status_for",
]

# Deny unless this table says otherwise: an unknown reason is a 403.
REASON_STATUS: dict[str, int] = {
    "allowed": 200,
    # 401: no usable credential, or a presented credential failed verification.
    "no_credential": 401,
    "cert_malformed": 401,
    "cert_not_svid": 401,
    "cert_expired": 401,
    "cert_untrusted": 401,
    "unknown_trust_domain": 401,
    "principal_mismatch": 401,
    "token_malformed": 401,
    "token_too_large": 401,
    "cert_chain_too_large": 401,
    "token_algorithm": 401,
    "token_unknown_key": 401,
    "token_signature": 401,
    "token_expired": 401,
    "token_not_yet_valid": 401,
    "token_audience": 401,
    "token_issuer": 401,
    "token_claims": 401,
    "token_binding": 401,  # RFC 8705 / 9449: not presented with what the token is bound to
    "dpop_proof": 401,  # RFC 9449: the proof is missing, malformed, stale, replayed or for another request
    "token_too_old": 401,
    "trust_stale": 401,
    "session_too_old": 401,
    "step_up_required": 401,  # RFC 9470: authenticate again, stronger or more recently
    # 403: authenticated (or anonymous) but not permitted.
    "no_rule": 403,
    "policy_denied": 403,
    "policy_error": 403,
    "request_invalid": 400,
    # Over a configured limit (`limits:`): refused before anything in it is parsed further.
    "request_headers_too_large": 431,
    "body_too_large": 413,
    "revoked": 403,
    "quarantined": 403,
    "exception": 200,
}


def status_for(reason: str) -> int:
    return REASON_STATUS.get(reason, 403)


class Error(Exception):
    """The root of every exception ext-authz defines (a test checks). Each keeps the builtin it is a
    kind of (ValueError, RuntimeError) as a second base, so code catching that still catches it."""


class AuthzError(Error):
    """An error with a stable ``reason`` code (a denial's, a fault's) and a ``detail`` for the log."""

    reason: str = "internal"

    def __init__(self, detail: str, *, reason: str | None = None) -> None:
        super().__init__(detail)
        if reason is not None:
            self.reason = reason
        self.detail = detail

    @property
    def status(self) -> int:
        return status_for(self.reason)


class CredentialError(AuthzError):
    """A presented credential (certificate or token) failed verification: always a 401."""

    def __init__(self, reason: str, detail: str, *, credential: str, issuer: str = "") -> None:
        super().__init__(detail, reason=reason)
        self.credential = credential  # "x509" | "token"
        self.issuer = issuer  # the configured issuer whose keys were asked, when that is known


class TrustError(AuthzError):
    """Trust material (a bundle or JWKS file) could not be loaded."""

    reason = "trust_invalid"


class StateError(AuthzError):
    """The state store failed (unreachable, locked, refused a write). Every backend raises only this,
    translated from its driver's errors at the backend's edge."""

    reason = "state_unavailable"


class ConfigError(AuthzError):
    """A configuration file is invalid. Names the file, the key and what was expected."""

    reason = "config_invalid"

    def __init__(self, file: str, key: str, expected: str) -> None:
        where = f"{file}: {key}" if key else file
        super().__init__(f"{where}: {expected}")
        self.file = file
        self.key = key
        self.expected = expected
