"""A store backend is one file plus a line in each registry: what its scheme means (ext_authz.stores,
which the settings read without loading a backend) and how to open it (state/backends). A new scheme is
accepted, and a shared one must be protected, without touching settings.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ext_authz.config import parse_settings
from ext_authz.errors import ConfigError
from ext_authz.settings import Settings
from ext_authz.state.backends import BACKENDS, Backend, open_log
from ext_authz.state.backends.memory import MemoryLog
from ext_authz.stores import SCHEMES, StoreScheme


@pytest.fixture
def etcd() -> Iterator[None]:
    SCHEMES["etcd"] = StoreScheme(shared=True)
    SCHEMES["etcds"] = StoreScheme(shared=True, tls=True)
    BACKENDS["etcd"] = BACKENDS["etcds"] = Backend(MemoryLog.from_settings)
    yield
    del BACKENDS["etcd"], BACKENDS["etcds"], SCHEMES["etcd"], SCHEMES["etcds"]


def test_every_scheme_has_a_backend_and_every_backend_a_scheme() -> None:
    assert set(SCHEMES) == set(BACKENDS)


def parse(tmp_path: Path, state: object) -> Settings:
    return parse_settings(yaml.safe_dump({"allow_empty": True, "state": state}), tmp_path / "c.yaml")


def test_a_registered_scheme_is_accepted_and_opened(etcd: None, tmp_path: Path) -> None:
    key = tmp_path / "k"
    key.write_bytes(b"k" * 32)
    cfg = parse(tmp_path, {"url": "etcd://etcd:2379", "hmac_key_file": str(key), "password_env": "P"})
    assert isinstance(open_log(cfg.state), MemoryLog)


def test_a_shared_backend_requires_the_hmac_key_and_refuses_inline_passwords(
    etcd: None, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="hmac_key_file is required with etcd://"):
        parse(tmp_path, "etcd://etcd:2379")
    with pytest.raises(ConfigError, match="never written in the config"):
        parse(tmp_path, "etcd://user:pw@etcd:2379")


def test_tls_only_on_a_tls_scheme(etcd: None, tmp_path: Path) -> None:
    key = tmp_path / "k"
    key.write_bytes(b"k" * 32)
    with pytest.raises(ConfigError, match="etcds://"):
        parse(tmp_path, {"url": "etcd://e:1", "hmac_key_file": str(key), "tls": {}})
    parse(tmp_path, {"url": "etcds://e:1", "hmac_key_file": str(key), "tls": {}})


def test_an_unregistered_scheme_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"memory://, sqlite://, redis://, rediss://"):
        parse(tmp_path, "etcd://etcd:2379")


def test_a_shared_store_url_takes_no_query(tmp_path: Path) -> None:
    """redis-py lets URL options override the settings: ?ssl_cert_reqs=none would turn off certificate
    checks, ?password= would put a secret in the config."""
    key = tmp_path / "k"
    key.write_bytes(b"k" * 32)
    for url in ("rediss://r:6379/0?ssl_cert_reqs=none", "redis://r:6379/0?password=hunter2", "redis://r/0#x"):
        with pytest.raises(ConfigError, match="no query"):
            parse(tmp_path, {"url": url, "hmac_key_file": str(key)})


def test_redis_messages_name_host_port_and_db_only() -> None:
    from ext_authz.state.backends.redis import RedisLog

    log = RedisLog("rediss://user:secret@r.example:6380/2?x=secret")
    assert log._where() == "r.example:6380/2"
    sentinel = RedisLog("redis://mymaster/0", sentinels=(("10.0.0.5", 26379),))
    assert sentinel._where() == "Sentinel master mymaster/0"


def test_rediss_checks_the_servers_certificate_and_name_even_without_a_tls_section(tmp_path: Path) -> None:
    """redis-py 5 checks no hostname by default: rediss:// with the system's CAs must still check it."""
    from ext_authz.state.backends.redis import RedisLog

    key = tmp_path / "k"
    key.write_bytes(b"k" * 32)
    cfg = parse(tmp_path, {"url": "rediss://redis.example:6380/0", "hmac_key_file": str(key)})
    log = RedisLog.from_settings(cfg.state)
    assert log._options["ssl_cert_reqs"] == "required" and log._options["ssl_check_hostname"] is True
    plain = RedisLog.from_settings(
        parse(tmp_path, {"url": "redis://r:6379/0", "hmac_key_file": str(key)}).state
    )
    assert "ssl_cert_reqs" not in plain._options and "ssl_check_hostname" not in plain._options
