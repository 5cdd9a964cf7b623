"""SSF transmitters' keys are trust material like any other: a JWKS file's are in the snapshot the files
build, a URL's are laid over it by a live source (trust/remote.TransmitterKeys), and either way the trust
revision names them."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from ext_authz.config import parse_settings
from ext_authz.dev import pki
from ext_authz.trust.files import load_trust
from ext_authz.trust.remote import RemoteTransmitter, TransmitterKeys
from ext_authz.trust.sources import TrustSources

FILE_TX = "https://file.idp.example.com"
URL_TX = "https://url.idp.example.com"


def settings(tmp_path: Path) -> object:
    jwks = tmp_path / "tx.jwks.json"
    jwks.write_text(json.dumps({"keys": [pki.jwk_public(pki.new_jwt_key(), use="sig")]}))
    receivers = [
        {
            "issuer": FILE_TX,
            "jwks": str(jwks),
            "audience": "https://us.example.com",
            "for_issuers": ["https://idp.example.com"],
        },
        {
            "issuer": URL_TX,
            "jwks": "https://url.idp.example.com/jwks",
            "audience": "https://us.example.com",
            "for_issuers": ["https://idp.example.com"],
        },
    ]
    doc = {
        "allow_empty": True,
        "issuers": {"https://idp.example.com": {"jwks": str(jwks), "audiences": ["api"]}},
        "shared_signals": {"receivers": receivers},
    }
    return parse_settings(yaml.safe_dump(doc), tmp_path / "c.yaml")


def test_file_keys_are_in_the_base_snapshot_and_url_keys_wait_for_their_source(tmp_path: Path) -> None:
    cfg = settings(tmp_path)
    base = load_trust(cfg)  # type: ignore[arg-type]
    assert len(base.transmitters[FILE_TX].keys) == 1 and not base.transmitters[FILE_TX].remote
    pending = base.transmitters[URL_TX]
    assert pending.remote and pending.fetched_at is None and len(pending.keys) == 0


def test_the_live_source_lays_fetched_keys_over_the_snapshot_and_the_revision(tmp_path: Path) -> None:
    cfg = settings(tmp_path)
    base = load_trust(cfg)  # type: ignore[arg-type]
    source = TransmitterKeys(lambda: None)
    sources = TrustSources((source,))
    sources.configure(cfg)  # type: ignore[arg-type]
    (remote,) = source.issuers.values()
    assert isinstance(remote, RemoteTransmitter) and remote.jwks_url.endswith("/jwks")
    before = sources.contribute(base)
    assert len(before.transmitters[URL_TX].keys) == 0

    key = pki.new_jwt_key()
    body = json.dumps({"keys": [pki.jwk_public(key, use="sig")]}).encode()
    from ext_authz.trust.bundles import parse_jwks

    remote.keys, remote.digest, remote.fetched_at = parse_jwks(body, "test", require_use=None), "d1", 1000.0
    after = sources.contribute(base)
    assert len(after.transmitters[URL_TX].keys) == 1 and after.transmitters[URL_TX].fetched_at == 1000.0
    assert after.transmitters[FILE_TX] is base.transmitters[FILE_TX]
    assert "ssf-jwks" in dict(after.revision.sources) and after.revision.key != before.revision.key
    assert after.issuers == base.issuers and after.domains == base.domains


def test_only_the_process_that_receives_fetches(tmp_path: Path) -> None:
    """With `workers: N`, worker 0 runs the receivers: the other workers fetch no transmitter keys."""
    cfg = settings(tmp_path)
    elsewhere = TransmitterKeys(lambda: None, enabled=False)
    elsewhere.configure(cfg)  # type: ignore[arg-type]
    assert elsewhere.issuers == {}
    receiving = TransmitterKeys(lambda: None)
    receiving.configure(cfg)  # type: ignore[arg-type]
    assert list(receiving.issuers) == [URL_TX]
