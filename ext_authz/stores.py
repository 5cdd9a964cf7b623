"""What each ``state.url`` scheme means, for the settings to check without loading any backend: whether
the store is shared over a network (then records are authenticated: the settings require
``hmac_key_file`` and accept credentials and TLS), whether the scheme is the TLS one, and the form its
URL must take. ``state/backends/`` opens each scheme named here (a test keeps the two in step)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SCHEMES", "StoreScheme"]


@dataclass(frozen=True, slots=True)
class StoreScheme:
    # Shared over a network by replicas that trust each other's records only when authenticated: the
    # settings require hmac_key_file, and accept username, password_file/password_env and tls.
    shared: bool = False
    tls: bool = False  # the scheme is the TLS one (tls: is accepted only here)
    url_form: str = ""  # a required prefix of the URL, e.g. sqlite:/// (an absolute path)


SCHEMES: dict[str, StoreScheme] = {
    "memory": StoreScheme(),
    "sqlite": StoreScheme(url_form="sqlite:///"),
    "redis": StoreScheme(shared=True),
    "rediss": StoreScheme(shared=True, tls=True),
}
