"""The v1 configuration contract: defaults, validation, paths, durations and error messages."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from ext_authz.config import load_settings, parse_settings
from ext_authz.errors import ConfigError
from ext_authz.settings import (
    DEFAULT_ADMIN_LISTEN,
    DEFAULT_HTTP_LISTEN,
    DEFAULT_LISTEN,
    DEFAULT_STATE,
    JWT_SVID_ALGORITHMS,
    Limits,
    Settings,
    parse_duration,
)

SOURCE = Path("/etc/ext-authz/config.yaml")
FILE = str(SOURCE)


def parse(text: str, source: Path = SOURCE, *, empty_ok: bool = True) -> Settings:
    """Parse a config file's text. These tests are about one key at a time, so by default the file
    says ``allow_empty: true`` (a file without trust or rules is otherwise refused: see below)."""
    text = textwrap.dedent(text)
    if empty_ok:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError:
            data = False  # a syntax error is the test's subject: hand the text over as it is
        if data is None or (isinstance(data, dict) and "allow_empty" not in data):
            text = yaml.safe_dump({"allow_empty": True, **(data or {})})
    return parse_settings(text, source)


def parse_error(text: str, source: Path = SOURCE, *, empty_ok: bool = True) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text, source, empty_ok=empty_ok)
    return info.value


# --- a file that trusts nothing or allows nothing is refused unless it says so ------------------


@pytest.mark.parametrize("text", ["", "{}", "# truncated\n"], ids=["zero-bytes", "mapping", "comment"])
def test_an_empty_file_is_invalid(text: str) -> None:
    err = parse_error(text, empty_ok=False)
    assert "trust_domains" in str(err) and "allow_empty" in str(err)


def test_a_file_with_trust_but_no_rules_is_invalid() -> None:
    err = parse_error(
        """
        issuers:
          https://idp.example.com: {jwks: /etc/jwks.json, audiences: [api]}
        """,
        empty_ok=False,
    )
    assert "rules" in str(err) and "every request would be denied" in str(err)


def test_a_file_with_rules_but_no_trust_is_invalid() -> None:
    err = parse_error("rules: [{name: r, effect: allow}]", empty_ok=False)
    assert "no trust source" in str(err)


def test_allow_empty_accepts_an_empty_file_on_purpose() -> None:
    assert parse("allow_empty: true", empty_ok=False).rules == ()


# --- defaults ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "{}", "# nothing but a comment\n"], ids=["empty", "mapping", "comment"])
def test_every_top_level_key_is_optional(text: str) -> None:
    cfg = parse(text)

    assert cfg.source == SOURCE
    assert cfg.listen == DEFAULT_LISTEN == "unix:///run/ext-authz/check.sock"
    assert cfg.http_listen == DEFAULT_HTTP_LISTEN == "127.0.0.1:9192"
    assert cfg.admin_listen == DEFAULT_ADMIN_LISTEN
    assert cfg.state.url == DEFAULT_STATE == "sqlite:///var/lib/ext-authz/state.db"
    assert cfg.mtls.source == "certificate"
    assert dict(cfg.trust_domains) == {}
    assert dict(cfg.issuers) == {}
    assert cfg.jwt_svid.audiences == ()
    assert cfg.jwt_svid.algorithms == JWT_SVID_ALGORITHMS
    assert cfg.jwt_svid.leeway == 30.0
    assert cfg.rules == ()
    assert cfg.cache.size == 10_000
    assert cfg.reload_interval == 1.0
    assert cfg.shutdown_grace == 10.0


def test_empty_sections_take_their_defaults() -> None:
    cfg = parse(
        """
        mtls:
        jwt_svid:
        cache:
        trust_domains:
        issuers:
        rules:
        """
    )

    assert cfg.mtls.source == "certificate"
    assert cfg.cache.size == 10_000
    assert cfg.rules == ()


def test_a_full_config_is_read() -> None:
    cfg = parse(
        """
        listen: 0.0.0.0:9000
        check: {plaintext: true}
        http_listen: "[::1]:9001"
        admin_listen: unix:///run/ext-authz/admin.sock
        state: {url: "redis://redis:6379/0", hmac_key_file: state.key}
        trust_domains:
          example.org:
            x509_bundle: /etc/bundles/example.org.pem
            jwt_bundle: /etc/bundles/example.org.jwks.json
        jwt_svid:
          audiences: [spiffe://example.org/ns/backend/sa/api]
          algorithms: [ES256]
          leeway: 15s
        issuers:
          https://idp.example.com:
            jwks: /etc/idp.json
            audiences: backend-api
            algorithms: [RS256, EdDSA]
            leeway: 1m
            subject_claim: email
        mtls:
          source: principal
        cache:
          size: 0
        rules:
          - name: frontend-reads
            description: reads from the web tier
            effect: allow
            mode: shadow
            anonymous: false
            match:
              hosts: [Backend.Internal]
              paths: ["/api/*"]
              methods: [get, HEAD]
              context_extensions: {listener: mesh}
            when: identity.authenticated
        """
    )

    assert (cfg.listen, cfg.http_listen, cfg.state.url) == (
        "0.0.0.0:9000",
        "[::1]:9001",
        "redis://redis:6379/0",
    )
    assert cfg.state.hmac_key_file == SOURCE.parent / "state.key"
    td = cfg.trust_domains["example.org"]
    assert td.x509_bundle == Path("/etc/bundles/example.org.pem")
    assert td.jwt_bundle == Path("/etc/bundles/example.org.jwks.json")
    assert cfg.jwt_svid.audiences == ("spiffe://example.org/ns/backend/sa/api",)
    assert cfg.jwt_svid.algorithms == ("ES256",)
    assert cfg.jwt_svid.leeway == 15.0
    iss = cfg.issuers["https://idp.example.com"]
    assert iss.audiences == ("backend-api",)  # a single string is a one-element list
    assert iss.algorithms == ("RS256", "EdDSA")
    assert (iss.leeway, iss.subject_claim) == (60.0, "email")
    assert cfg.mtls.source == "principal"
    assert cfg.cache.size == 0
    (r,) = cfg.rules
    assert (r.name, r.effect, r.mode, r.anonymous, r.description) == (
        "frontend-reads",
        "allow",
        "shadow",
        False,
        "reads from the web tier",
    )
    assert r.match.hosts == ("backend.internal",)  # hosts are case-insensitive: stored lower-case
    assert r.match.paths == ("/api/*",)
    assert r.match.methods == ("GET", "HEAD")
    assert dict(r.match.context_extensions) == {"listener": "mesh"}
    assert r.when == "identity.authenticated"


def test_rule_defaults_are_allow_enforce_authenticated_only() -> None:
    (r,) = parse("rules: [{name: everything}]").rules

    assert (r.effect, r.mode, r.anonymous, r.when) == ("allow", "enforce", False, None)
    assert (r.match.hosts, r.match.paths, r.match.methods) == ((), (), ())
    assert dict(r.match.context_extensions) == {}


# --- listen addresses ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    ["unix:///run/ext-authz/authz.sock", "0.0.0.0:0", "localhost:65535", "[::]:9191", "127.0.0.1:1"],
)
def test_listen_accepts_host_port_and_unix_sockets(address: str) -> None:
    assert parse(f'{{listen: "{address}", check: {{plaintext: true}}}}').listen == address


@pytest.mark.parametrize("value", ["null", '""', "~"])
def test_http_listen_can_be_turned_off(value: str) -> None:
    assert parse(f"http_listen: {value}").http_listen is None
    assert parse("listen: unix:///run/x.sock").http_listen == DEFAULT_HTTP_LISTEN


@pytest.mark.parametrize("key", ["listen", "http_listen", "admin_listen"])
@pytest.mark.parametrize(
    "address", ["9191", ":9191", "localhost", "localhost:http", "localhost:65536", "unix://run/x.sock"]
)
def test_bad_listen_address(key: str, address: str) -> None:
    err = parse_error(f'{key}: "{address}"')

    assert err.key == key
    assert str(err).startswith(f"{FILE}: {key}: ")
    assert "unix:///" in str(err)


# --- trust domains and issuers ---------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_files_directory(tmp_path: Path) -> None:
    source = tmp_path / "conf" / "config.yaml"
    cfg = parse(
        """
        trust_domains:
          example.org:
            x509_bundle: bundles/example.org.pem
            jwt_bundle: /abs/example.org.jwks.json
        jwt_svid: {audiences: [api]}
        issuers:
          https://idp.example.com: {jwks: ../idp/jwks.json, audiences: [api]}
        """,
        source,
    )

    td = cfg.trust_domains["example.org"]
    assert td.x509_bundle == tmp_path / "conf" / "bundles" / "example.org.pem"
    assert td.jwt_bundle == Path("/abs/example.org.jwks.json")
    assert cfg.issuers["https://idp.example.com"].jwks_file == tmp_path / "conf" / ".." / "idp" / "jwks.json"
    assert cfg.watched_files() == (
        source,
        tmp_path / "conf" / "bundles" / "example.org.pem",
        Path("/abs/example.org.jwks.json"),
        tmp_path / "conf" / ".." / "idp" / "jwks.json",
    )


def test_one_file_serving_both_bundles_is_watched_once() -> None:
    cfg = parse(
        """
        trust_domains:
          example.org: {x509_bundle: b.json, jwt_bundle: b.json}
        jwt_svid: {audiences: [api]}
        """
    )

    assert cfg.watched_files() == (SOURCE, SOURCE.parent / "b.json")


def test_a_trust_domain_with_only_an_x509_bundle_needs_no_jwt_audiences() -> None:
    cfg = parse("trust_domains: {example.org: {x509_bundle: b.pem}}")

    assert cfg.trust_domains["example.org"].jwt_bundle is None
    assert cfg.jwt_svid.audiences == ()


def test_jwt_svid_algorithms_default_to_the_asymmetric_set() -> None:
    assert set(JWT_SVID_ALGORITHMS) == {f"{f}{n}" for f in ("RS", "ES", "PS") for n in (256, 384, 512)}


def test_issuer_algorithms_default_to_rs256_and_es256() -> None:
    cfg = parse("issuers: {https://idp: {jwks: j.json, audiences: [api]}}")

    assert cfg.issuers["https://idp"].algorithms == ("RS256", "ES256")
    assert cfg.issuers["https://idp"].leeway == 30.0
    assert cfg.issuers["https://idp"].subject_claim == "sub"


# --- durations ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("250ms", 0.25),
        ("15m", 900.0),
        ("4h", 14_400.0),
        ("7d", 604_800.0),
        ("90s", 90.0),
        ("1.5s", 1.5),
        ("90", 90.0),
        (" 30s ", 30.0),
        (90, 90.0),
        (0, 0.0),
        (2.5, 2.5),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value", ["10x", "s", "", "-5s", "5 s", "1e3", True, None, [1], -1, float("inf"), float("nan")]
)
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


@pytest.mark.parametrize("value", ["10x", "-5s", "true", "[1]"])
def test_a_bad_duration_in_the_config_names_its_key(value: str) -> None:
    err = parse_error(f"jwt_svid: {{leeway: {value}}}")

    assert err.key == "jwt_svid.leeway"
    assert str(err).startswith(f"{FILE}: jwt_svid.leeway: ")
    assert "duration" in str(err)


def test_durations_in_the_config() -> None:
    cfg = parse(
        """
        reload_interval: 250ms
        shutdown_grace: 4h
        jwt_svid: {leeway: 15m}
        issuers: {https://idp: {jwks: j.json, audiences: [api], leeway: 5}}
        """
    )

    assert cfg.reload_interval == 0.25
    assert cfg.shutdown_grace == 14_400.0
    assert cfg.jwt_svid.leeway == 900.0
    assert cfg.issuers["https://idp"].leeway == 5.0


@pytest.mark.parametrize("value", [".inf", ".nan"])
def test_a_leeway_cannot_be_infinite(value: str) -> None:
    # an infinite leeway would accept every expired token
    err = parse_error(f"issuers: {{https://idp: {{jwks: j.json, audiences: [api], leeway: {value}}}}}")

    assert err.key == "issuers.https://idp.leeway"


def test_reload_interval_has_a_floor() -> None:
    assert parse("reload_interval: 1ms").reload_interval == 0.05


# --- errors: each names the file and the key ---------------------------------------------------------

TD = "trust_domains: {example.org: {x509_bundle: b.pem, jwt_bundle: b.json}}\n"
ISS = "issuers:\n  https://idp.example.com:\n"

BAD = [
    # (id, yaml, key, words the message must contain)
    ("top-level-list", "- listen", "(top level)", "mapping"),
    ("unknown-top-key", "listne: 127.0.0.1:1", "listne", "unknown key"),
    ("unknown-mtls-key", "mtls: {sorce: principal}", "mtls.sorce", "unknown key"),
    ("unknown-cache-key", "cache: {entries: 1}", "cache.entries", "unknown key"),
    ("unknown-jwt-svid-key", "jwt_svid: {audience: [a]}", "jwt_svid.audience", "unknown key"),
    (
        "unknown-td-key",
        "trust_domains: {example.org: {bundle: b.pem}}",
        "trust_domains.example.org.bundle",
        "unknown",
    ),
    (
        "unknown-issuer-key",
        ISS + "    jwks: j.json\n    audiences: [a]\n    aud: [b]",
        "issuers.https://idp.example.com.aud",
        "unknown",
    ),
    ("unknown-rule-key", "rules: [{name: a, efect: deny}]", "rules[0].efect", "unknown key"),
    ("unknown-match-key", "rules: [{name: a, match: {path: [/x]}}]", "rules[0].match.path", "unknown key"),
    ("mtls-not-mapping", "mtls: principal", "mtls", "mapping"),
    ("td-needs-a-bundle", "trust_domains: {example.org: {}}", "trust_domains.example.org", "x509_bundle"),
    ("td-null-needs-a-bundle", "trust_domains: {example.org: }", "trust_domains.example.org", "jwt_bundle"),
    (
        "td-uppercase",
        "trust_domains: {Example.org: {x509_bundle: b.pem}}",
        "trust_domains.Example.org",
        "trust domain",
    ),
    (
        "td-spiffe-id",
        'trust_domains: {"spiffe://example.org": {x509_bundle: b.pem}}',
        "trust_domains.spiffe://example.org",
        "trust domain",
    ),
    (
        "td-with-path",
        'trust_domains: {"example.org/ns": {x509_bundle: b.pem}}',
        "trust_domains.example.org/ns",
        "trust domain",
    ),
    ("td-list", "trust_domains: [example.org]", "trust_domains", "mapping"),
    (
        "td-bundle-url",
        "trust_domains: {example.org: {x509_bundle: 'https://x/b.pem'}}",
        "trust_domains.example.org.x509_bundle",
        "file path",
    ),
    (
        "td-bundle-empty",
        "trust_domains: {example.org: {x509_bundle: ''}}",
        "trust_domains.example.org.x509_bundle",
        "non-empty",
    ),
    (
        "td-workload-api-not-unix",
        "{trust_domains: {example.org: {workload_api: 'tcp://agent:8081'}}, jwt_svid: {audiences: [a]}}",
        "trust_domains.example.org.workload_api",
        "unix:///",
    ),
    (
        "td-workload-api-and-files",
        "{trust_domains: {example.org: {workload_api: 'unix:///s.sock', x509_bundle: r.pem}}, "
        "jwt_svid: {audiences: [a]}}",
        "trust_domains.example.org",
        "never mix",
    ),
    (
        "jwt-bundle-needs-audiences",
        "trust_domains: {example.org: {jwt_bundle: b.json}}",
        "jwt_svid.audiences",
        "required",
    ),
    (
        "jwt-svid-hs256",
        TD + "jwt_svid: {audiences: [a], algorithms: [ES256, HS256]}",
        "jwt_svid.algorithms",
        "'HS256'",
    ),
    ("jwt-svid-none", TD + "jwt_svid: {audiences: [a], algorithms: [none]}", "jwt_svid.algorithms", "'none'"),
    (
        "jwt-svid-eddsa",
        TD + "jwt_svid: {audiences: [a], algorithms: [EdDSA]}",
        "jwt_svid.algorithms",
        "'EdDSA'",
    ),
    ("issuers-list", "issuers: [https://idp]", "issuers", "mapping"),
    ("issuer-needs-jwks", ISS + "    audiences: [a]", "issuers.https://idp.example.com.jwks", "required"),
    ("issuer-null", ISS, "issuers.https://idp.example.com.jwks", "required"),
    (
        "issuer-needs-audiences",
        ISS + "    jwks: j.json",
        "issuers.https://idp.example.com.audiences",
        "required",
    ),
    (
        "issuer-empty-audiences",
        ISS + "    jwks: j.json\n    audiences: []",
        "issuers.https://idp.example.com.audiences",
        "required",
    ),
    (
        "issuer-hs256",
        ISS + "    jwks: j.json\n    audiences: [a]\n    algorithms: [HS256]",
        "issuers.https://idp.example.com.algorithms",
        "'HS256'",
    ),
    (
        "issuer-none",
        ISS + "    jwks: j.json\n    audiences: [a]\n    algorithms: [RS256, none]",
        "issuers.https://idp.example.com.algorithms",
        "'none'",
    ),
    (
        "issuer-spiffe",
        "issuers: {'spiffe://example.org': {jwks: j.json, audiences: [a]}}",
        "issuers.spiffe://example.org",
        "trust_domains",
    ),
    (
        "issuer-bad-leeway",
        ISS + "    jwks: j.json\n    audiences: [a]\n    leeway: soon",
        "issuers.https://idp.example.com.leeway",
        "duration",
    ),
    ("bad-reload-interval", "reload_interval: often", "reload_interval", "duration"),
    ("negative-grace", "shutdown_grace: -1", "shutdown_grace", "negative"),
    ("bad-mtls-source", "mtls: {source: spiffe}", "mtls.source", "'spiffe'"),
    ("bad-state", "state: postgres://db/authz", "state.url", "memory://"),
    ("state-number", "state: 5", "state", "mapping"),
    ("state-redis-inline-password", "state: 'redis://:s3cret@r:6379/0'", "state.url", "password_file"),
    ("state-redis-needs-a-key", "state: 'redis://r:6379/0'", "state.hmac_key_file", "required"),
    (
        "state-tls-needs-rediss",
        "state: {url: 'redis://r:6379/0', hmac_key_file: k, tls: {}}",
        "state.tls",
        "rediss",
    ),
    ("state-sqlite-password", "state: {url: 'sqlite:///s.db', password_env: P}", "state", "Redis only"),
    ("check-plaintext-everywhere", "listen: 0.0.0.0:9191", "listen", "check.plaintext"),
    (
        "check-tls-needs-allow-list",
        "{listen: 0.0.0.0:9191, check: {tls: {cert: c.pem, key: k.pem}}}",
        "check.allowed_spiffe_ids",
        "required",
    ),
    (
        "check-socket-mode-others",
        "{listen: 'unix:///s.sock', check: {socket_mode: '0666'}}",
        "check.socket_mode",
        "others",
    ),
    (
        "issuer-with-hash",
        "issuers: {'https://idp#x': {jwks: j.json, audiences: [a]}}",
        "issuers.https://idp#x",
        "'#'",
    ),
    ("cache-size-negative", "cache: {size: -1}", "cache.size", "whole number"),
    ("cache-size-bool", "cache: {size: true}", "cache.size", "whole number"),
    ("cache-size-string", "cache: {size: lots}", "cache.size", "whole number"),
    ("rules-mapping", "rules: {a: {effect: allow}}", "rules", "list"),
    ("rule-not-mapping", "rules: [allow-all]", "rules[0]", "mapping"),
    ("rule-needs-name", "rules: [{effect: allow}]", "rules[0].name", "required"),
    (
        "rule-duplicate-name",
        "rules: [{name: a}, {name: b}, {name: a}]",
        "rules[2].name",
        "duplicate rule name 'a'",
    ),
    ("rule-bad-effect", "rules: [{name: a, effect: permit}]", "rules[0].effect", "'permit'"),
    ("rule-bad-mode", "rules: [{name: a, mode: audit}]", "rules[0].mode", "'audit'"),
    (
        "rule-bad-method",
        "rules: [{name: a, match: {methods: [GET, FETCH]}}]",
        "rules[0].match.methods",
        "'FETCH'",
    ),
    ("rule-bad-path", "rules: [{name: a, match: {paths: ['api/*']}}]", "rules[0].match.paths", "'api/*'"),
    ("rule-hosts-number", "rules: [{name: a, match: {hosts: [1]}}]", "rules[0].match.hosts", "string"),
    (
        "rule-extensions-list",
        "rules: [{name: a, match: {context_extensions: [a]}}]",
        "rules[0].match.context_extensions",
        "mapping",
    ),
    (
        "rule-extensions-number",
        "rules: [{name: a, match: {context_extensions: {port: 1}}}]",
        "rules[0].match.context_extensions",
        "string",
    ),
    ("rule-anonymous-string", "rules: [{name: a, anonymous: 'yes'}]", "rules[0].anonymous", "true or false"),
    ("rule-when-number", "rules: [{name: a, when: 1}]", "rules[0].when", "string"),
    ("second-rule", "rules: [{name: a}, {name: b, effect: maybe}]", "rules[1].effect", "'maybe'"),
]


@pytest.mark.parametrize(("text", "key", "words"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_config_error_names_the_file_and_the_key(text: str, key: str, words: str) -> None:
    err = parse_error(text)

    assert err.reason == "config_invalid"
    assert (err.file, err.key) == (FILE, key)
    assert str(err).startswith(f"{FILE}: {key}: ")
    assert words in str(err)


@pytest.mark.parametrize(
    "text",
    ["listen: [", "rules:\n  - name: a\n   effect: deny", "a: b: c", "state: 'memory://"],
    ids=["unclosed-flow", "bad-indent", "nested-mapping", "unclosed-quote"],
)
def test_yaml_syntax_error_names_the_file_and_the_line(text: str) -> None:
    err = parse_error(text)

    assert err.file == FILE
    assert str(err).startswith(f"{FILE}: not valid YAML")
    assert "line" in str(err)


def test_unknown_key_message_lists_the_keys_expected() -> None:
    err = parse_error("mtls: {sorce: principal}")

    assert "['source']" in str(err)


# --- load_config ---------------------------------------------------------------------------------


def test_load_config_reads_the_file_and_remembers_it(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "listen: unix:///run/authz.sock\ntrust_domains: {example.org: {x509_bundle: b.pem}}\n"
        "rules: [{name: r, effect: allow}]\n"
    )

    cfg = load_settings(path)

    assert cfg.source == path
    assert cfg.listen == "unix:///run/authz.sock"
    assert cfg.trust_domains["example.org"].x509_bundle == tmp_path / "b.pem"


def test_load_config_accepts_a_string_path(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("state: memory://\nallow_empty: true\n")

    assert load_settings(str(path)).state.url == "memory://"


def test_load_config_of_a_missing_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"

    with pytest.raises(ConfigError) as info:
        load_settings(path)

    assert info.value.file == str(path)
    assert str(info.value).startswith(f"{path}: cannot read the file")


def test_load_config_errors_name_the_loaded_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("rules: [{name: a, effect: permit}]\n")

    with pytest.raises(ConfigError) as info:
        load_settings(path)

    assert str(info.value).startswith(f"{path}: rules[0].effect: ")


def test_transport_is_native_on_a_unix_socket_and_grpcio_where_tls_is_needed() -> None:
    """auto: pygrpc-native (installed with the dev extras) where it is safe, the unix-socket sidecar."""
    assert parse("").transport == "auto"
    assert parse("listen: unix:///run/ext-authz/check.sock").check_transport == "native"
    assert parse("").check_transport == "native"  # the default: a unix socket, native
    tcp = "listen: 127.0.0.1:9191\ncheck: {plaintext: true}\n"
    assert parse(tcp).check_transport == "grpcio"  # TCP: grpcio, as for TLS
    assert parse("listen: unix:///run/x.sock\ntransport: grpcio").check_transport == "grpcio"
    assert parse(tcp + "transport: native").check_transport == "native"


def test_plaintext_tcp_is_said_out_loud_even_on_loopback() -> None:
    """Any local process can call a loopback port and cause Check's side effects: TCP without TLS needs
    check.plaintext: true, as beyond the host."""
    err = parse_error("listen: 127.0.0.1:9191")
    assert err.key == "listen" and "check.plaintext: true" in str(err) and "on this host" in str(err)
    assert parse("listen: 127.0.0.1:9191\ncheck: {plaintext: true}").listen == "127.0.0.1:9191"


def test_native_on_localhost_must_name_the_loopback_address() -> None:
    """Native binds one address for ``localhost`` (grpcio binds all it names): another local process
    could take the other family's and answer an Envoy that resolves there."""
    err = parse_error("listen: localhost:9191\ncheck: {plaintext: true}\ntransport: native")

    assert err.key == "listen" and "127.0.0.1" in str(err)
    other = parse_error("listen: LocalHost.:9191\ncheck: {plaintext: true}\ntransport: native")
    assert other.key == "listen" and "name the loopback address" in str(other)
    plain = "check: {plaintext: true}\n"
    assert parse(plain + "listen: localhost:9191").check_transport == "grpcio"
    assert parse(plain + "listen: 127.0.0.1:9191\ntransport: native").check_transport == "native"
    assert parse(plain + "listen: '[::1]:9191'\ntransport: native").check_transport == "native"


def test_an_unknown_transport_is_refused() -> None:
    err = parse_error("transport: h3")

    assert err.key == "transport"
    assert "grpcio" in str(err) and "native" in str(err)


CHECK_TLS = """
    listen: 0.0.0.0:9191
    trust_domains: {{example.org: {{x509_bundle: bundle.pem}}}}
    check:
      tls: {{cert: server.pem, key: server.key}}
      allowed_spiffe_ids: [spiffe://example.org/ns/backend/sa/envoy]
    transport: {transport}
"""


def test_native_transport_with_check_tls_is_refused_at_load() -> None:
    assert parse(CHECK_TLS.format(transport="grpcio")).check_transport == "grpcio"  # TLS served by grpcio
    err = parse_error(CHECK_TLS.format(transport="native"))  # native serves plaintext only

    assert err.reason == "config_invalid"
    assert (err.file, err.key) == (FILE, "transport")
    assert str(err).startswith(f"{FILE}: transport: ") and "check.tls" in str(err)


def test_limits_default_and_may_be_set() -> None:
    assert parse("").limits == Limits()
    cfg = parse("limits: {max_token_bytes: 4096, max_headers: 50, max_chain_length: 2}")

    assert (cfg.limits.max_token_bytes, cfg.limits.max_headers, cfg.limits.max_chain_length) == (4096, 50, 2)
    assert cfg.limits.max_body_bytes == Limits().max_body_bytes


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("limits: {max_token_bytes: 10}", "limits.max_token_bytes"),
        ("limits: {max_token_bytes: 20000}", "limits.max_token_bytes"),  # over the verifier's own bound
        ("limits: {max_chain_length: 9}", "limits.max_chain_length"),
        ("limits: {max_chain_bytes: 70000}", "limits.max_chain_bytes"),
        ("limits: {max_headers: 0}", "limits.max_headers"),
        ("limits: {max_chain_length: true}", "limits.max_chain_length"),
        ("limits: {max_body_bytes: 1.5}", "limits.max_body_bytes"),
        ("limits: {max_tokens: 1}", "limits.max_tokens"),
    ],
)
def test_bad_limits_name_the_key(text: str, key: str) -> None:
    assert parse_error(text).key == key


def test_event_loop_defaults_to_uvloop_and_may_be_asyncio() -> None:
    assert parse("").event_loop == "uvloop"
    assert parse("event_loop: asyncio").event_loop == "asyncio"
    assert parse_error("event_loop: trio").key == "event_loop"


def test_a_config_written_as_json_is_the_same_config(tmp_path: Path) -> None:
    """JSON is read by a JSON parser (fast for generated policies); the settings are YAML's."""
    import json

    doc = {
        "allow_empty": True,
        "rules": [
            {"name": "a", "match": {"paths": ["/x/*"], "methods": ["GET"]}, "when": "identity.authenticated"},
            {"name": "b", "effect": "deny", "anonymous": True, "match": {"hosts": ["*.example.com"]}},
        ],
        "cache": {"size": 123},
    }
    as_yaml = parse_settings(yaml.safe_dump(doc), tmp_path / "c.yaml")
    as_json = parse_settings(json.dumps(doc).encode(), tmp_path / "c.json")
    assert as_json.model_dump() == as_yaml.model_dump()
    # YAML that merely starts with a brace (a flow mapping) is still YAML
    flow = parse_settings("{allow_empty: true, cache: {size: 7}}", tmp_path / "f.yaml")
    assert flow.cache.size == 7
    with pytest.raises(ConfigError, match="rules"):
        parse_settings('{"rules": [{"name": "r", "effect": "maybe"}]}', tmp_path / "bad.json")


def test_a_large_yaml_file_parsed_in_a_child_process_is_the_same_config(tmp_path: Path) -> None:
    """On reload a large YAML file is parsed in a child process (libyaml holds the GIL); the settings,
    and the error for a broken file, are those of parsing it here."""
    from ext_authz.config import load as config_load

    rules = [
        {"name": f"r{i}", "match": {"paths": [f"/t{i}/*"]}, "when": f'identity.path == "/{i}"'}
        for i in range(4000)
    ]
    text = yaml.safe_dump({"allow_empty": True, "rules": rules}).encode()
    assert len(text) >= config_load.ISOLATED_FROM
    here = parse_settings(text, tmp_path / "c.yaml")
    elsewhere = parse_settings(text, tmp_path / "c.yaml", isolated=True)
    assert elsewhere.model_dump() == here.model_dump()
    assert config_load._yaml_elsewhere(text) == yaml.safe_load(text)  # it really was the child's
    broken = text + b"\n  - : [unclosed"
    with pytest.raises(ConfigError) as a:
        parse_settings(broken, tmp_path / "c.yaml")
    with pytest.raises(ConfigError) as b:
        parse_settings(broken, tmp_path / "c.yaml", isolated=True)
    assert str(a.value) == str(b.value)
    dated = text + b"\nwhen_written: 2024-01-01\n"  # a YAML date: not JSON, read here instead
    assert config_load._yaml_elsewhere(dated) is None


@pytest.mark.parametrize(
    ("state", "key", "message"),
    [
        ({"url": "sqlite:///tmp/s.db", "sentinels": ["127.0.0.1:26379"]}, "sentinels", "for Redis only"),
        ({"url": "sqlite:///tmp/s.db", "wait_replicas": 1}, "wait_replicas", "for Redis only"),
        ({"url": "redis://mymaster/0", "sentinels": ["127.0.0.1"]}, "sentinels", "entry 0: expected HOST"),
        ({"url": "redis://mymaster/0", "sentinels": ["h:99999"]}, "sentinels", "entry 0: expected HOST"),
        ({"url": "redis://10.0.0.1:6379/0", "sentinels": ["h:26379"]}, "url", "names the master"),
        ({"url": "redis://mymaster/0", "wait_replicas": 17}, "wait_replicas", ""),
    ],
)
def test_sentinel_and_wait_settings_are_checked(
    tmp_path: Path, state: dict[str, object], key: str, message: str
) -> None:
    hmac = tmp_path / "hmac.key"
    hmac.write_text("k" * 64)
    if str(state["url"]).startswith("redis"):
        state = {**state, "hmac_key_file": str(hmac)}
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"allow_empty": True, "state": state}))
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert key in str(err.value) and message in str(err.value)


def test_sentinel_settings_are_read(tmp_path: Path) -> None:
    hmac = tmp_path / "hmac.key"
    hmac.write_text("k" * 64)
    cfg = tmp_path / "config.yaml"
    state = {
        "url": "redis://mymaster/0",
        "sentinels": ["10.0.0.5:26379", "[::1]:26379"],
        "wait_replicas": 1,
        "wait_timeout": "500ms",
        "hmac_key_file": str(hmac),
    }
    cfg.write_text(yaml.safe_dump({"allow_empty": True, "state": state}))
    s = load_settings(cfg).state
    assert s.sentinels == ("10.0.0.5:26379", "[::1]:26379") and s.wait_replicas == 1 and s.wait_timeout == 0.5


@pytest.mark.parametrize(
    ("url", "sentinels", "message"),
    [
        ("redis://mymaster/zero", ["h:26379"], "the database is a number"),
        ("redis://mymaster/0", ["::1"], "expected HOST:PORT"),
        ("redis://mymaster/0", ["::1:26379"], "expected HOST:PORT"),
    ],
)
def test_sentinel_settings_that_could_not_work_are_refused(
    tmp_path: Path, url: str, sentinels: list[str], message: str
) -> None:
    hmac = tmp_path / "hmac.key"
    hmac.write_text("k" * 64)
    cfg = tmp_path / "config.yaml"
    state = {"url": url, "sentinels": sentinels, "hmac_key_file": str(hmac)}
    cfg.write_text(yaml.safe_dump({"allow_empty": True, "state": state}))
    with pytest.raises(ConfigError, match=message):
        load_settings(cfg)


def test_a_sentinel_master_keeps_its_case() -> None:
    from ext_authz.state.backends.redis import RedisLog

    log = RedisLog("redis://MyMaster/0", sentinels=(("127.0.0.1", 26379),))
    assert log._where() == "Sentinel master MyMaster/0"
    client = log._client(1.0)
    assert getattr(client.connection_pool, "service_name", "") == "MyMaster"
