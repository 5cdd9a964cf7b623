"""CheckRequest → RequestContext: headers, pseudo-headers, bearer tokens, certificates, XFCC."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
from google.protobuf import json_format

from ext_authz._proto.envoy.base_pb2 import HeaderValue
from ext_authz._proto.envoy.external_auth_pb2 import CheckRequest
from ext_authz.dev import pki
from ext_authz.envoy.normalize import normalize
from ext_authz.identity.xfcc import (
    MAX_XFCC_BYTES,
    MultipleCertificates,
    chain_from_xfcc,
    decode_certificate,
    parse_xfcc,
    split_pem_chain,
)
from ext_authz.model import Credentials, RequestContext

FRONTEND = "spiffe://example.org/ns/frontend/sa/web"

# What Envoy sends for an HTTP request on a listener with include_peer_certificate: readable JSON.
HTTP_REQUEST = """
{
  "attributes": {
    "source": {
      "address": {"socketAddress": {"address": "10.0.0.7", "portValue": 40312}},
      "principal": "spiffe://example.org/ns/frontend/sa/web"
    },
    "destination": {
      "address": {"socketAddress": {"address": "10.0.0.1", "portValue": 8443}}
    },
    "request": {
      "http": {
        "id": "1234",
        "method": "GET",
        "headers": {
          ":authority": "backend.internal:8443",
          ":method": "GET",
          ":path": "/api/orders?id=7&sort=desc",
          ":scheme": "https",
          "X-Request-Id": "req-42",
          "User-Agent": "curl/8.5"
        },
        "path": "/api/orders?id=7&sort=desc",
        "host": "backend.internal:8443",
        "scheme": "https",
        "protocol": "HTTP/2"
      }
    },
    "contextExtensions": {"listener": "mesh", "route": "orders"}
  }
}
"""


def check_request(doc: str | dict[str, Any]) -> Any:
    text = doc if isinstance(doc, str) else json.dumps(doc)
    return json_format.Parse(text, CheckRequest())


def with_headers(headers: dict[str, str], **http: str) -> Any:
    return check_request({"attributes": {"request": {"http": {"headers": headers, **http}}}})


@pytest.fixture(scope="module")
def chain() -> tuple[str, str, str]:
    """PEM leaf, intermediate and root of a real SPIFFE chain."""
    root = pki.make_ca("root", spiffe_td="example.org")
    inter = pki.make_ca("intermediate", parent=root, spiffe_td="example.org", path_length=0)
    leaf = pki.make_leaf(inter, [FRONTEND])
    return leaf.pem, inter.pem, root.pem


# --- request fields ------------------------------------------------------------------------------


def test_http_request_is_read() -> None:
    ctx = normalize(check_request(HTTP_REQUEST))

    assert ctx.http is not None
    assert (ctx.http.method, ctx.http.host, ctx.http.scheme, ctx.http.protocol) == (
        "GET",
        "backend.internal:8443",
        "https",
        "HTTP/2",
    )
    assert ctx.http.path == "/api/orders?id=7&sort=desc"  # as sent: the query string stays
    assert ctx.http.path_only == "/api/orders"
    assert ctx.source_address == "10.0.0.7:40312"
    assert ctx.source_principal == FRONTEND
    assert ctx.credentials.principal == FRONTEND
    assert dict(ctx.context_extensions) == {"listener": "mesh", "route": "orders"}
    assert ctx.request_id == "req-42"


def test_header_keys_are_lower_cased() -> None:
    ctx = normalize(check_request(HTTP_REQUEST))

    assert ctx.http is not None
    assert dict(ctx.http.headers) == {
        ":authority": "backend.internal:8443",
        ":method": "GET",
        ":path": "/api/orders?id=7&sort=desc",
        ":scheme": "https",
        "x-request-id": "req-42",
        "user-agent": "curl/8.5",
    }


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer abc.def.ghi", "X-Request-Id": "r-1", "123": "n"},
        {"authorization": "Bearer abc.def.ghi", "x-request-ID": "r-1", "123": "n"},
        {"123": "n", "authorization": "Bearer abc.def.ghi", "x-request-id": "r-1"},
    ],
)
def test_names_sent_in_upper_case_are_read_lower_cased(headers: dict[str, str]) -> None:
    ctx = normalize(with_headers(headers))

    assert ctx.http is not None
    assert dict(ctx.http.headers) == {
        "authorization": "Bearer abc.def.ghi",
        "x-request-id": "r-1",
        "123": "n",
    }
    assert ctx.credentials.bearer == "abc.def.ghi"
    assert ctx.request_id == "r-1"


def test_context_is_read_only() -> None:
    ctx = normalize(check_request(HTTP_REQUEST))

    assert ctx.http is not None
    with pytest.raises(TypeError):
        ctx.http.headers["x-spiffe-id"] = "forged"  # type: ignore[index]
    with pytest.raises(TypeError):
        ctx.context_extensions["listener"] = "edge"  # type: ignore[index]


def test_pseudo_headers_fill_in_missing_fields() -> None:
    ctx = normalize(
        with_headers(
            {":method": "post", ":path": "/submit?x=1", ":authority": "api.example.com", ":scheme": "http"}
        )
    )

    assert ctx.http is not None
    assert (ctx.http.method, ctx.http.path, ctx.http.host, ctx.http.scheme) == (
        "POST",
        "/submit?x=1",
        "api.example.com",
        "http",
    )


def test_fields_win_over_pseudo_headers() -> None:
    ctx = normalize(with_headers({":method": "GET", ":path": "/header"}, method="PUT", path="/field"))

    assert ctx.http is not None
    assert (ctx.http.method, ctx.http.path) == ("PUT", "/field")


@pytest.mark.parametrize(
    ("path", "path_only"),
    [
        ("/a/b?c=d", "/a/b"),
        ("/a/b#frag", "/a/b"),
        ("/a?q=1#f", "/a"),
        ("/a#f?q=1", "/a"),
        ("/a%2Fb?x", "/a%2Fb"),  # undecoded
        ("/plain", "/plain"),
        ("", ""),
    ],
)
def test_path_only_strips_the_query_and_fragment(path: str, path_only: str) -> None:
    ctx = normalize(with_headers({":path": path}))

    assert ctx.http is not None
    assert ctx.http.path == path
    assert ctx.http.path_only == path_only


def test_empty_check_request_is_an_l4_check() -> None:
    ctx = normalize(CheckRequest())

    assert ctx == RequestContext(
        http=None,
        source_address="",
        source_principal="",
        context_extensions={},
        credentials=Credentials(),
    )


def test_network_check_keeps_addresses_principal_and_extensions() -> None:
    ctx = normalize(
        check_request(
            {
                "attributes": {
                    "source": {
                        "address": {"socketAddress": {"address": "::1", "portValue": 5}},
                        "principal": FRONTEND,
                    },
                    "destination": {"address": {"pipe": {"path": "/run/backend.sock"}}},
                    "contextExtensions": {"listener": "tcp"},
                }
            }
        )
    )

    assert ctx.http is None
    assert ctx.source_address == "[::1]:5"  # bracketed: "::1:5" would be ambiguous
    assert ctx.credentials.principal == FRONTEND
    assert dict(ctx.context_extensions) == {"listener": "tcp"}


def test_a_unix_socket_peer_is_named_by_its_path() -> None:
    ctx = normalize(
        check_request({"attributes": {"source": {"address": {"pipe": {"path": "/run/frontend.sock"}}}}})
    )

    assert ctx.source_address == "unix:/run/frontend.sock"


def test_header_map_with_raw_values() -> None:
    req = CheckRequest()
    http = req.attributes.request.http
    http.path = "/api/x"
    http.header_map.headers.extend(
        [
            HeaderValue(key="Authorization", raw_value=b"Bearer abc.def.ghi"),
            HeaderValue(key="X-Forwarded-For", raw_value=b"10.0.0.1"),
            HeaderValue(key="x-forwarded-for", raw_value=b"10.0.0.2"),
            HeaderValue(key="x-legacy", value="from-value"),
            HeaderValue(key=":authority", raw_value=b"backend.internal"),
            HeaderValue(key="x-bytes", raw_value=b"caf\xc3\xa9 \xff"),
        ]
    )

    ctx = normalize(req)

    assert ctx.http is not None
    assert ctx.http.host == "backend.internal"
    assert ctx.http.headers["authorization"] == "Bearer abc.def.ghi"
    assert ctx.http.headers["x-forwarded-for"] == "10.0.0.1,10.0.0.2"  # repeated headers are joined
    assert ctx.http.headers["x-legacy"] == "from-value"
    assert ctx.http.headers["x-bytes"] == "café \ufffd"
    assert ctx.credentials.bearer == "abc.def.ghi"


# --- bearer tokens -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "bearer", "malformed"),
    [
        ("Bearer abc.def.ghi", "abc.def.ghi", False),
        ("bearer abc.def.ghi", "abc.def.ghi", False),
        ("BEARER abc.def.ghi", "abc.def.ghi", False),
        ("  Bearer   abc.def.ghi  ", "abc.def.ghi", False),
        ("Bearer eyJ-_.A+/b==", "eyJ-_.A+/b==", False),
        ("Basic dXNlcjpwYXNz", None, False),  # another scheme is not our credential
        ("Digest username=x", None, False),
        ("abc.def.ghi", None, False),
        ("Bearer", None, True),
        ("Bearer ", None, True),
        ("Bearer    ", None, True),
        ("Bearer abc def", None, True),
        ("Bearer abc\tdef", None, True),
        ("Bearer abc,def", None, True),
        ('Bearer "abc"', None, True),
        ("Bearer =abc", None, True),
        ("Bearer ==", None, True),  # padding alone
        ("Bearer ab=cd", None, True),  # "=" only at the end
        ("Bearer abc==", "abc==", False),
        ("Bearer ~.~", "~.~", False),
        ("Bearer abcé", None, True),  # a letter, not an ASCII one
        ("Bearer abc\x00def", None, True),
        ("Bearer abc\u0660", None, True),  # a digit, not an ASCII one
        ("Bearer abc%2Fdef", None, True),
    ],
)
def test_bearer_token(authorization: str, bearer: str | None, malformed: bool) -> None:
    ctx = normalize(with_headers({"authorization": authorization}))

    assert ctx.credentials.bearer == bearer
    assert ctx.credentials.bearer_malformed is malformed


def test_no_authorization_header_is_no_credential() -> None:
    ctx = normalize(with_headers({"x-authorization": "Bearer abc"}))

    assert (ctx.credentials.bearer, ctx.credentials.bearer_malformed) == (None, False)


def test_authorization_header_key_is_case_insensitive() -> None:
    ctx = normalize(with_headers({"Authorization": "Bearer abc"}))

    assert ctx.credentials.bearer == "abc"


# --- peer certificate ------------------------------------------------------------------------------


def test_url_encoded_certificate_is_decoded(chain: tuple[str, str, str]) -> None:
    leaf = chain[0]
    req = CheckRequest()
    req.attributes.source.certificate = quote(leaf, safe="")

    ctx = normalize(req)

    assert "%0A" in req.attributes.source.certificate
    # Kept as Envoy sent it (the cache key); decoded only when it must be verified.
    encoded = ctx.credentials.peer_certificate
    assert encoded is not None
    assert encoded == req.attributes.source.certificate
    assert decode_certificate(encoded) == leaf.strip()
    assert split_pem_chain(decode_certificate(encoded)) == (leaf.strip(),)


def test_certificate_decoding_keeps_plus_signs(chain: tuple[str, str, str]) -> None:
    leaf = chain[0].strip()
    assert "+" in leaf  # base64 of a certificate: '+' is there to be mistaken for a space
    req = CheckRequest()
    req.attributes.source.certificate = quote(leaf, safe="+")  # a literal '+' must stay a '+'

    encoded = normalize(req).credentials.peer_certificate
    assert encoded is not None
    assert decode_certificate(encoded) == leaf


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not a certificate",
        "{leaf}{leaf}",
        "{leaf}\n{inter}",
        "junk{leaf}",
        "{leaf}junk",
        "-----BEGIN CERTIFICATE-----",
    ],
    ids=["empty", "text", "twice", "leaf-and-intermediate", "leading-junk", "trailing-junk", "unterminated"],
)
def test_source_certificate_holds_exactly_one_certificate(chain: tuple[str, str, str], text: str) -> None:
    leaf, inter = chain[0].strip(), chain[1].strip()
    with pytest.raises(MultipleCertificates):
        decode_certificate(quote(text.format(leaf=leaf, inter=inter), safe=""))


def test_no_certificate_is_none() -> None:
    assert normalize(check_request(HTTP_REQUEST)).credentials.peer_certificate is None


# --- XFCC ---------------------------------------------------------------------------------------------


def test_parse_xfcc_single_element() -> None:
    value = "By=spiffe://example.org/ns/backend/sa/api;Hash=468ed33be7;URI=spiffe://example.org/ns/frontend/sa/web"

    assert parse_xfcc(value) == [
        {
            "by": ["spiffe://example.org/ns/backend/sa/api"],
            "hash": ["468ed33be7"],
            "uri": ["spiffe://example.org/ns/frontend/sa/web"],
        }
    ]


def test_parse_xfcc_quoted_values_keep_separators() -> None:
    value = 'By=spiffe://a/b;Subject="CN=web,O=Example;OU=x=y";DNS=a.example;DNS=b.example,URI=spiffe://c/d'

    assert parse_xfcc(value) == [
        {"by": ["spiffe://a/b"], "subject": ["CN=web,O=Example;OU=x=y"], "dns": ["a.example", "b.example"]},
        {"uri": ["spiffe://c/d"]},
    ]


def test_parse_xfcc_escaped_quote_and_case_insensitive_keys() -> None:
    assert parse_xfcc(r'SUBJECT="CN=\"quoted\", O=x";cHaIn=abc') == [
        {"subject": ['CN="quoted", O=x'], "chain": ["abc"]}
    ]


@pytest.mark.parametrize("value", ["", ",", ";;", "no-equals-sign", " , ; "])
def test_parse_xfcc_ignores_empty_and_keyless_parts(value: str) -> None:
    assert parse_xfcc(value) == []


def test_parse_xfcc_trims_whitespace() -> None:
    assert parse_xfcc(" By = spiffe://a/b ; URI=spiffe://c/d , Hash=1 ") == [
        {"by": ["spiffe://a/b"], "uri": ["spiffe://c/d"]},
        {"hash": ["1"]},
    ]


def test_split_pem_chain(chain: tuple[str, str, str]) -> None:
    leaf, inter, root = chain
    text = f"junk before\n{leaf}\nbetween\n{inter}{root}trailing"

    assert split_pem_chain(text) == (leaf.strip(), inter.strip(), root.strip())
    assert split_pem_chain("-----BEGIN CERTIFICATE-----\nnot base64 !\n-----END CERTIFICATE-----") == ()
    assert split_pem_chain("") == ()


def chain_of(req: Any) -> tuple[str, ...]:
    """The untrusted intermediates a verifier would get from this request's XFCC header."""
    return chain_from_xfcc(normalize(req).credentials.xfcc)


def _xfcc_request(xfcc: str) -> Any:
    return with_headers({"x-forwarded-client-cert": xfcc, ":path": "/"})


@pytest.mark.parametrize("quoted", [True, False])
def test_xfcc_chain_is_url_decoded_into_pem_certificates(chain: tuple[str, str, str], quoted: bool) -> None:
    leaf, inter, _ = chain
    encoded = quote(leaf + inter, safe="")
    value = f'"{encoded}"' if quoted else encoded

    req = _xfcc_request(f"By=spiffe://example.org/ns/backend/sa/api;Hash=abc;Chain={value};URI={FRONTEND}")

    assert chain_of(req) == (leaf.strip(), inter.strip())


def test_xfcc_chain_is_taken_from_the_last_element(chain: tuple[str, str, str]) -> None:
    leaf, inter, root = chain
    earlier = quote(root, safe="")
    latest = quote(leaf + inter, safe="")
    xfcc = f'By=spiffe://a/b;Chain="{earlier}";Subject="CN=x,O=y",By=spiffe://example.org/ns/backend/sa/api;Chain="{latest}"'

    assert chain_of(_xfcc_request(xfcc)) == (leaf.strip(), inter.strip())


def test_xfcc_chain_missing_from_the_last_element_is_empty(chain: tuple[str, str, str]) -> None:
    encoded = quote(chain[0] + chain[1], safe="")
    xfcc = f'By=spiffe://a/b;Chain="{encoded}",By=spiffe://c/d;URI={FRONTEND}'

    assert chain_of(_xfcc_request(xfcc)) == ()


def test_oversized_xfcc_is_ignored(chain: tuple[str, str, str]) -> None:
    encoded = quote(chain[0] + chain[1], safe="")
    xfcc = f'Chain="{encoded}";Subject="{"x" * MAX_XFCC_BYTES}"'

    assert chain_of(_xfcc_request(xfcc)) == ()
    assert chain_of(_xfcc_request(f'Chain="{encoded}"')) != ()


def test_no_xfcc_is_no_chain() -> None:
    assert chain_of(check_request(HTTP_REQUEST)) == ()


@pytest.mark.parametrize("value", ["Bearer\tabc.def.ghi", "Bearer  abc.def.ghi", "bearer \t abc.def.ghi "])
def test_bearer_separated_by_any_whitespace_is_a_token(value: str) -> None:
    assert normalize(with_headers({"authorization": value})).credentials.bearer == "abc.def.ghi"


@pytest.mark.parametrize("value", ["Bearerabc.def.ghi", "Bearer:abc", "Bearer"])
def test_bearer_lookalikes_are_malformed_not_anonymous(value: str) -> None:
    creds = normalize(with_headers({"authorization": value})).credentials
    assert creds.bearer is None and creds.bearer_malformed
