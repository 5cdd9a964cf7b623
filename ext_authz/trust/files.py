"""Trust material from files named in the settings: the base every live source adds to.

Each trust domain's bundle files and each issuer's JWKS file are read and parsed; the revision is the
digest of their bytes. A file that cannot be read or parsed is a TrustError naming it: a reload then
keeps the last good material.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

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
    issuers: dict[str, IssuerTrust] = {}
    for iss, ic in sorted(cfg.issuers.items()):
        jwks = ic.jwks_file
        if jwks is None:
            # Fetched over HTTPS at the edge (trust/remote.py) and merged in; none until then.
            digest.update(b"iss-remote\0" + iss.encode())
            issuers[iss] = IssuerTrust(issuer=iss, keys=JwtKeys(), remote=True, max_stale=ic.max_stale)
            continue
        data = _read(jwks, f"JWKS of issuer {iss}")
        digest.update(b"iss\0" + iss.encode() + b"\0" + data)
        issuers[iss] = IssuerTrust(issuer=iss, keys=parse_jwks(data, str(jwks), require_use=None))
    transmitters: dict[str, IssuerTrust] = {}
    for rc in cfg.shared_signals.receivers:
        if rc.jwks_file is None:
            # Fetched at the edge (trust/remote.TransmitterKeys) and merged in; none until then.
            digest.update(b"ssf-remote\0" + rc.issuer.encode())
            transmitters[rc.issuer] = IssuerTrust(
                issuer=rc.issuer, keys=JwtKeys(), remote=True, max_stale=rc.max_stale
            )
            continue
        data = _read(rc.jwks_file, f"JWKS of SSF transmitter {rc.issuer}")
        digest.update(b"ssf\0" + rc.issuer.encode() + b"\0" + data)
        transmitters[rc.issuer] = IssuerTrust(
            issuer=rc.issuer, keys=parse_jwks(data, str(rc.jwks_file), require_use=None)
        )
    return TrustSnapshot(
        revision=TrustRevision(digest.hexdigest()[:16]),
        domains=domains,
        issuers=issuers,
        transmitters=transmitters,
    )
