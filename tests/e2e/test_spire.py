"""End to end with a real SPIRE: spire-server and spire-agent (built from tools/spire), the real Envoy
taking its certificate and validation context over SDS from the agent, ext-authz taking its bundles
from the Workload API, and clients holding X509-SVIDs and JWT-SVIDs that the agent issued.

example.org's SPIRE is rooted in a CA of ours (the ``disk`` UpstreamAuthority), so a test can also sign
a certificate with example.org's real trust anchor. other.org is a second spire-server whose bundle is
federated into example.org's (``bundle set`` + ``-federatesWith``). X509-SVIDs live 20 s, so they
rotate every ~10 s while the module runs.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from spiffe import SpiffeId, WorkloadApiClient, X509Svid

from ext_authz.dev import pki
from ext_authz.dev.demo import BACKEND_ID, WORKLOADS
from ext_authz.dev.spire import Entry, SpireAgent, SpireServer, short_dir, wait_until
from ext_authz.dev.spire_stack import SpireStack, bundle_pem, svid_pems, write_pem
from ext_authz.dev.stack import Ports
from tests.conftest import REPO

pytestmark = pytest.mark.e2e

TD, OTHER = "example.org", "other.org"
FRONTEND, BILLING = WORKLOADS["frontend"], WORKLOADS["billing"]
PARTNER = f"spiffe://{OTHER}/ns/partner/sa/client"
X509_SVID_TTL = "20s"
PARTNER_RULE = {
    "name": "partners-read-reports",
    "effect": "allow",
    "match": {"paths": ["/partner/*"], "methods": ["GET"]},
    "when": 'identity.spiffe_id.startsWith("spiffe://other.org/ns/partner/")',
}


@dataclass
class Spire:
    root: Path
    server: SpireServer
    other: SpireServer
    agent: SpireAgent
    stack: SpireStack
    upstream_ca: pki.Issued  # example.org's trust anchor
    ca_file: Path  # example.org's bundle as the Workload API gives it: how clients verify Envoy
    partner: tuple[Path, Path]  # other.org X509-SVID minted by other.org's spire-server
    plain_port: int  # the mesh listener's twin without Envoy's SPIFFE validator

    def client(self) -> WorkloadApiClient:
        return WorkloadApiClient(socket_path=self.agent.socket_uri, default_timeout=10)


@pytest.fixture(scope="module")
def spire(demo_dir: Path) -> Iterator[Spire]:
    root = short_dir("ext-authz-spire-")
    try:
        with contextlib.ExitStack() as stack:
            upstream = pki.make_ca("example.org upstream root", spiffe_td=TD, days=2)
            write_pem(root / "upstream/root.pem", upstream.pem)
            write_pem(root / "upstream/root.key", upstream.key_pem, secret=True)
            other = stack.enter_context(SpireServer(root / "other", OTHER))
            server = stack.enter_context(
                SpireServer(
                    root / "server",
                    TD,
                    x509_svid_ttl=X509_SVID_TTL,
                    upstream=(root / "upstream/root.pem", root / "upstream/root.key"),
                )
            )
            server.set_bundle(f"spiffe://{OTHER}", other.bundle("spiffe"))
            agent = stack.enter_context(SpireAgent(root / "agent", server))
            parent = agent.spiffe_id
            server.create_entries(
                [
                    Entry(FRONTEND, parent=parent),
                    Entry(BILLING, parent=parent),
                    # Envoy and ext-authz run as this uid too: federating this entry brings them other.org.
                    Entry(
                        BACKEND_ID,
                        parent=parent,
                        dns_names=("localhost",),
                        federates_with=(f"spiffe://{OTHER}",),
                    ),
                ]
            )
            agent.wait_for_svids([FRONTEND, BILLING, BACKEND_ID])
            agent.wait_for_bundles({TD, OTHER})
            with WorkloadApiClient(socket_path=agent.socket_uri) as client:
                bundles = client.fetch_x509_bundles(timeout=10)
            ca_file = root / "bundle.pem"
            write_pem(ca_file, bundle_pem(bundles, TD))
            assert upstream.pem.encode() in ca_file.read_bytes()  # SPIRE serves our CA as its trust anchor
            plain_roots = root / "plain-roots.pem"
            write_pem(plain_roots, bundle_pem(bundles, TD) + bundle_pem(bundles, OTHER))
            chain, key, _ = other.mint_x509(PARTNER, root / "partner")
            rules = yaml.safe_load((demo_dir / "config.yaml").read_text())["rules"] + [PARTNER_RULE]
            stack_ = SpireStack(
                demo_dir=demo_dir,
                envoy_template=REPO / "envoy.yaml",
                run_dir=root / "run",
                ports=Ports.free(),
                overrides={"rules": rules, "state": "memory://"},
                agent_socket=agent.socket,
                trust_domains=(TD, OTHER),
                plain_x509=(0, plain_roots),  # a free port, read back from Envoy once it listens
            )
            stack.enter_context(stack_)
            plain_port = stack_.listener_ports["mesh_x509"]
            yield Spire(root, server, other, agent, stack_, upstream, ca_file, (chain, key), plain_port)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: str
    server_cert: x509.Certificate

    @property
    def reason(self) -> str | None:
        return self.headers.get("x-ext-authz-reason")

    def echo(self) -> dict[str, str]:
        data: dict[str, str] = json.loads(self.body)["headers"]
        return data


def call(
    spire: Spire,
    path: str,
    *,
    port: int | None = None,
    cert: tuple[Path, Path] | None = None,
    token: str | None = None,
) -> Reply:
    """One HTTPS request to Envoy on a fresh connection; the client verifies Envoy with the bundle."""
    ctx = ssl.create_default_context(cafile=str(spire.ca_file))
    if cert is not None:
        ctx.load_cert_chain(*cert)
    conn = http.client.HTTPSConnection("localhost", port or spire.stack.ports.mesh, context=ctx, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        resp = conn.getresponse()
        der = conn.sock.getpeercert(binary_form=True)
        assert der is not None
        return Reply(
            resp.status,
            {k.lower(): v for k, v in resp.getheaders()},
            resp.read().decode(),
            x509.load_der_x509_certificate(der),
        )
    finally:
        conn.close()


def svid_files(svid: X509Svid, directory: Path) -> tuple[Path, Path]:
    """The SVID as the PEM files a client (curl, ssl) loads: chain and key, named by serial."""
    chain, key = svid_pems(svid)
    base = directory / f"{svid.leaf.serial_number:x}"
    write_pem(base.with_suffix(".key"), key, secret=True)
    write_pem(base.with_suffix(".pem"), chain)
    return base.with_suffix(".pem"), base.with_suffix(".key")


def current_svid(spire: Spire, spiffe_id: str) -> X509Svid:
    with spire.client() as client:
        svids = {str(s.spiffe_id): s for s in client.fetch_x509_svids()}
    return svids[spiffe_id]


def uri_sans(cert: x509.Certificate) -> list[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return ext.value.get_values_for_type(x509.UniformResourceIdentifier)


def test_frontend_svid_from_spire_is_allowed_and_envoy_serves_its_spire_svid(
    spire: Spire, tmp_path: Path
) -> None:
    svid = current_svid(spire, FRONTEND)
    r = call(spire, "/api/orders", cert=svid_files(svid, tmp_path))
    assert r.status == 200, r
    assert r.echo()["x-spiffe-id"] == FRONTEND
    assert r.echo()["x-ext-authz-identity-kind"] == "x509_svid"
    # Envoy's certificate is the backend's X509-SVID, delivered by SDS and chaining to the SPIRE bundle.
    assert uri_sans(r.server_cert) == [BACKEND_ID]
    assert r.server_cert.issuer != spire.upstream_ca.cert.subject  # SPIRE's intermediate signed it


def test_billing_svid_from_spire_is_refused_by_policy(spire: Spire, tmp_path: Path) -> None:
    r = call(spire, "/api/orders", cert=svid_files(current_svid(spire, BILLING), tmp_path))
    assert (r.status, r.reason) == (403, "no_rule")


def test_jwt_svid_minted_by_the_agent_is_verified(spire: Spire) -> None:
    with spire.client() as client:
        good = client.fetch_jwt_svid(audience={BACKEND_ID}, subject=SpiffeId(FRONTEND)).token
        elsewhere = client.fetch_jwt_svid(
            audience={"spiffe://example.org/ns/elsewhere/sa/api"}, subject=SpiffeId(FRONTEND)
        ).token
    r = call(spire, "/internal/jobs", port=spire.stack.ports.edge, token=good)
    assert r.status == 200, r
    assert r.echo()["x-spiffe-id"] == FRONTEND
    assert r.echo()["x-ext-authz-identity-kind"] == "jwt_svid"
    r = call(spire, "/internal/jobs", port=spire.stack.ports.edge, token=elsewhere)
    assert (r.status, r.reason) == (401, "token_audience")


def test_federated_other_org_svid_is_accepted(spire: Spire) -> None:
    r = call(spire, "/partner/reports", cert=spire.partner)
    assert r.status == 200, r
    assert r.echo()["x-spiffe-id"] == PARTNER
    # Accepted as itself, not as a member of example.org: example.org's rules do not apply to it.
    r = call(spire, "/api/orders", cert=spire.partner)
    assert (r.status, r.reason) == (403, "no_rule")


def test_other_org_id_signed_by_example_org_ca_is_refused(spire: Spire, tmp_path: Path) -> None:
    ca = spire.upstream_ca
    forged = pki.make_leaf(ca, [PARTNER], common_name="forged partner")
    honest = pki.make_leaf(ca, [FRONTEND], common_name="frontend, signed by the trust anchor")
    files = {}
    for name, leaf in (("forged", forged), ("honest", honest)):
        write_pem(tmp_path / f"{name}.pem", leaf.pem)
        write_pem(tmp_path / f"{name}.key", leaf.key_pem, secret=True)
        files[name] = (tmp_path / f"{name}.pem", tmp_path / f"{name}.key")
    # Where Envoy checks chains the plain X.509 way (any root of any trust domain), ext-authz decides: the
    # CA is example.org's real trust anchor (an example.org ID it signed passes), yet an other.org ID
    # must chain to other.org's bundle.
    r = call(spire, "/api/orders", port=spire.plain_port, cert=files["honest"])
    assert r.status == 200, r
    r = call(spire, "/partner/reports", port=spire.plain_port, cert=files["forged"])
    assert (r.status, r.reason) == (401, "cert_untrusted")
    # Envoy's SPIFFE validator (SDS "ALL") already refuses it during the handshake.
    with pytest.raises(ssl.SSLError):  # Envoy ends the handshake
        call(spire, "/partner/reports", cert=files["forged"])


def test_svid_rotation_under_short_ttl_fails_no_request(spire: Spire, tmp_path: Path) -> None:
    """Requests keep flowing, each with the SVID the Workload API gives now, while SPIRE rotates the
    client's SVID and Envoy's own (over SDS) at least once each. No request may fail."""
    client_serials: list[int] = []
    server_serials: list[int] = []
    failures: list[str] = []
    sent = 0
    deadline = time.monotonic() + 120  # a bound on the loop, not an expectation: TTL 20 s rotates at ~10 s
    while not (len(set(client_serials)) > 1 and len(set(server_serials)) > 1):
        if time.monotonic() > deadline:
            pytest.fail(
                f"no rotation seen in {sent} requests: client serials {sorted(set(client_serials))},"
                f" Envoy serials {sorted(set(server_serials))}"
            )
        svid = current_svid(spire, FRONTEND)
        client_serials.append(svid.leaf.serial_number)
        sent += 1
        try:
            r = call(spire, "/api/orders", cert=svid_files(svid, tmp_path))
        except OSError as exc:
            failures.append(f"request {sent} with serial {svid.leaf.serial_number:x}: {exc!r}")
            continue
        server_serials.append(r.server_cert.serial_number)
        if r.status != 200 or r.echo().get("x-spiffe-id") != FRONTEND:
            failures.append(f"request {sent}: {r.status} {r.reason}")
    assert failures == []
    assert sent >= 2


@pytest.fixture(scope="module")
def defederated(spire: Spire) -> Spire:
    """other.org's bundle deleted from example.org's server (entries dissociated): the Workload API and
    SDS no longer carry it. The tests using this run last, as the ones above rely on the federation."""
    spire.server.delete_bundle(f"spiffe://{OTHER}")
    spire.agent.wait_for_bundles({TD})

    def envoy_refuses() -> bool | None:
        try:
            call(spire, "/partner/reports", cert=spire.partner)
        except ssl.SSLError:
            return True
        return None

    wait_until("Envoy to drop other.org from its SDS validation context", envoy_refuses, 30)
    return spire


def test_ending_federation_withdraws_other_org_from_envoy(defederated: Spire) -> None:
    with pytest.raises(ssl.SSLError):
        call(defederated, "/partner/reports", cert=defederated.partner)
    r = call(
        defederated, "/api/orders", cert=svid_files(current_svid(defederated, FRONTEND), defederated.root)
    )
    assert r.status == 200, r  # example.org is untouched


def test_ending_federation_withdraws_other_org_from_ext_authz(defederated: Spire) -> None:
    # Behind the plain X.509 listener (its file still trusts other.org's root) only ext-authz can refuse.
    # The agent pushed the update to Envoy already (see the fixture); ext-authz subscribes to the same agent.
    def refused() -> Reply | None:
        r = call(defederated, "/partner/reports", port=defederated.plain_port, cert=defederated.partner)
        return r if r.status != 200 else None

    r = wait_until("ext-authz to refuse other.org", refused, 5)
    assert (r.status, r.reason) in {(401, "unknown_trust_domain"), (401, "cert_untrusted")}


def test_envoy_calls_check_over_mtls_with_svids_both_sides_got_from_spire(
    spire: Spire, tmp_path: Path
) -> None:
    """check.tls.workload_api: ext-authz serves its own X509-SVID from the agent; Envoy's ext_authz cluster
    presents the backend SVID it got over SDS, which is the one caller on check.allowed_spiffe_ids."""
    stack = SpireStack(
        demo_dir=spire.stack.demo_dir,
        envoy_template=REPO / "envoy.yaml",
        run_dir=spire.root / "run-tls",
        ports=Ports.free(),
        overrides={"state": "memory://"},
        agent_socket=spire.agent.socket,
        check="tls",
    )
    with stack:
        frontend = svid_files(current_svid(spire, FRONTEND), tmp_path / "f")
        billing = svid_files(current_svid(spire, BILLING), tmp_path / "b")
        assert call(spire, "/api/orders", cert=frontend, port=stack.ports.mesh).status == 200
        assert call(spire, "/api/orders", cert=billing, port=stack.ports.mesh).reason == "no_rule"
        config = yaml.safe_load(stack.config_path.read_text())
        assert config["check"]["tls"] == {"workload_api": f"unix://{spire.agent.socket}"}
