"""A running ext-authz that receives SETs from transmitters named in the test, and the people they name.

One server (in process: its gRPC Check port and its HTTP listener on port 0), token issuers whose keys are
the demo IdP's, one push receiver per transmitter, and a policy that allows ``GET /user/*`` to any
user token unless it says ``trusted_network: false``. SETs are signed with a test key; tokens are minted
per test with the claims, ``iat`` and issuer it needs, so "issued before the event" is exact, not a sleep.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc.jwk import Key, RSAKey

from ext_authz.dev import pki
from tests.component.checkreq import check_request
from tests.component.test_server import Running
from tests.component.test_ssf import post
from tests.component.test_streams import scrape, start
from tests.ssfkit import jwks_file, mint_set, new_key

AUDIENCE = "https://authz.example.com"  # how transmitters name this receiver (the SETs' aud)
SECRET = "s3cret-push-token-0123456789"
EMAIL_ISSUER = "https://mail-idp.example"  # an issuer whose subjects are email addresses

RULES = [
    {
        "name": "untrusted-networks",  # a transmitter may say a token's network is no longer trusted
        "effect": "deny",
        "match": {"paths": ["/user/*"]},
        # false, or "false" as CAEP's draft examples wrote it
        "when": 'has(identity.claims.trusted_network) && string(identity.claims.trusted_network) == "false"',
    },
    {
        "name": "read-only-admins-stay-out-of-settings",
        "effect": "deny",
        "match": {"paths": ["/user/settings"]},
        "when": 'has(identity.claims.role) && identity.claims.role == "ro-admin"',
    },
    {
        "name": "compliant-devices-only",
        "effect": "deny",
        "match": {"paths": ["/user/*"]},
        "when": 'has(signals.device.compliance) && signals.device.compliance == "not-compliant"',
    },
    {
        "name": "people",
        "effect": "allow",
        "match": {"paths": ["/user/*"], "methods": ["GET"]},
        "when": '"oidc" in identity.kinds',
    },
]


@dataclass
class SsfStack:
    running: Running
    demo: Path
    idp_key: Key
    set_key: Key

    async def push(self, claims: dict[str, Any]) -> tuple[int, str]:
        token = mint_set(self.set_key, claims)
        headers = {"Content-Type": "application/secevent+jwt", "Authorization": f"Bearer {SECRET}"}
        status, _, body = await post(self.running.http, "/ssf/events", token.encode(), headers)
        return status, body

    def token(self, issuer: str, sub: str, iat: float, **claims: Any) -> str:
        body = {"iss": issuer, "aud": "backend-api", "sub": sub, "iat": int(iat), "exp": int(iat) + 7200}
        body.update(claims)
        return pki.mint_jwt(self.idp_key, body, alg="RS256")

    async def reason(self, token: str, path: str = "/user/me", headers: dict[str, str] | None = None) -> str:
        req = check_request(self.demo, token=token, path=path, listener="edge", headers=headers)
        resp = await self.running.stub.Check(req)
        return str(resp.dynamic_metadata.fields["reason"].string_value)

    async def metrics(self) -> str:
        return await scrape(self.running)

    async def close(self) -> None:
        await self.running.channel.close()
        await self.running.server.stop(0)


async def start_stack(
    demo: Path,
    dest: Path,
    *,
    transmitters: Iterable[str],
    issuers: Iterable[str],
    receiver: dict[str, Any] | None = None,
    audience: str = AUDIENCE,
    **config: Any,
) -> SsfStack:
    """A server receiving from each of ``transmitters`` (push, with ``receiver`` settings added), for the
    users of ``issuers`` and of EMAIL_ISSUER (whose subjects are email addresses)."""
    dest.mkdir(parents=True, exist_ok=True)
    set_key = new_key()
    jwks = jwks_file(dest / "ssf-jwks.json", set_key)
    (dest / "push-secret").write_text(SECRET + "\n")
    idp_jwks = str(demo / "idp/jwks.json")
    token_issuers = sorted(set(issuers) - {EMAIL_ISSUER})
    issuer_cfg: dict[str, Any] = {
        iss: {"jwks": idp_jwks, "audiences": ["backend-api"], "algorithms": ["RS256"]}
        for iss in token_issuers
    }
    issuer_cfg[EMAIL_ISSUER] = {
        "jwks": idp_jwks,
        "audiences": ["backend-api"],
        "algorithms": ["RS256"],
        "subject_claim": "email",
    }
    receivers = [
        {
            "issuer": tx,
            "jwks": str(jwks),
            "audience": audience,
            "for_issuers": [*token_issuers, EMAIL_ISSUER],
            "authorization_file": str(dest / "push-secret"),
            **(receiver or {}),
        }
        for tx in sorted(set(transmitters))
    ]
    running = await start(
        demo,
        dest / "authz",
        issuers=issuer_cfg,
        rules=RULES,
        shared_signals={"receivers": receivers},
        **config,
    )
    idp_key = RSAKey.import_key(json.loads((demo / "idp/idp.key.json").read_text()))
    return SsfStack(running, demo, idp_key, set_key)


def now() -> int:
    return int(time.time())
