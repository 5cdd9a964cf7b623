"""Trust material from files named in the settings: the base every live source adds to.

Each trust domain's bundle files and each issuer's JWKS file are read and parsed; the revision is the
digest of their bytes. A file that cannot be read or parsed is a TrustError naming it: a reload then
keeps the last good material.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.verification import Store

from ..errors import TrustError
from ..settings import Settings
from .bundles import IssuerTrust, JwtKeys, TrustDomainTrust, TrustSnapshot, parse_jwks, parse_x509_bundle
from .revision import TrustRevision

__all__ = ["load_trust"]


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TrustError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from exc


def _key_set(
    digest: Any, tag: bytes, name: str, path: Path | None, max_stale: float, what: str
) -> IssuerTrust:
    """A key set by name: from its file (digested), or remote (only its name digested: the fetched keys
    are a live source's part of the revision)."""
    if path is None:
        digest.update(tag + b"-remote\0" + name.encode())
        return IssuerTrust(issuer=name, keys=JwtKeys(), remote=True, max_stale=max_stale)
    data = _read(path, what)
    digest.update(tag + b"\0" + name.encode() + b"\0" + data)
    return IssuerTrust(issuer=name, keys=parse_jwks(data, str(path), require_use=None))


def load_trust(cfg: Settings) -> TrustSnapshot:
    digest = hashlib.sha256()
    domains: dict[str, TrustDomainTrust] = {}
    for name, td in sorted(cfg.trust_domains.items()):
        roots: tuple[x509.Certificate, ...] = ()
        jwt_keys = JwtKeys()
        td_digest = hashlib.sha256(name.encode())
        digest.update(b"td\0" + name.encode())
        if td.x509_bundle is not None:
            data = _read(td.x509_bundle, f"X.509 bundle of {name}")
            digest.update(b"x509\0" + data)
            td_digest.update(b"x509\0" + data)
            roots = parse_x509_bundle(data, str(td.x509_bundle))
        if td.jwt_bundle is not None:
            data = _read(td.jwt_bundle, f"JWT bundle of {name}")
            digest.update(b"jwt\0" + data)
            td_digest.update(b"jwt\0" + data)
            jwt_keys = parse_jwks(data, str(td.jwt_bundle), require_use="jwt-svid")
        domains[name] = TrustDomainTrust(
            name=name,
            x509_roots=roots,
            jwt_keys=jwt_keys,
            store=Store(list(roots)) if roots else None,
            revision=td_digest.hexdigest()[:16],
        )
    # OIDC issuers' keys and SSF transmitters' keys: a JWKS file read here, or a URL fetched at the edge
    # (trust/remote.py: RemoteTrust, TransmitterKeys) and merged in, with no keys until then.
    issuers = {
        iss: _key_set(digest, b"iss", iss, ic.jwks_file, ic.max_stale, f"JWKS of issuer {iss}")
        for iss, ic in sorted(cfg.issuers.items())
    }
    transmitters = {
        rc.issuer: _key_set(
            digest, b"ssf", rc.issuer, rc.jwks_file, rc.max_stale, f"JWKS of SSF transmitter {rc.issuer}"
        )
        for rc in cfg.shared_signals.receivers
    }
    return TrustSnapshot(
        revision=TrustRevision(digest.hexdigest()[:16]),
        domains=domains,
        issuers=issuers,
        transmitters=transmitters,
    )
