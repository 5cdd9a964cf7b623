"""ext-authz: continuous zero-trust authorization for Envoy."""

import warnings as _warnings

__version__ = "0.1.0"  # pyproject.toml says the same (a test compares)

# py-spiffe 0.3.2 names `dsa.DSAPublicKey` when spiffe.bundle.jwt_bundle is imported, and cryptography 51
# deprecates DSA, so every start that imports py-spiffe (the Workload API source, `make run SPIRE=1`) would
# print a CryptographyDeprecationWarning about a key type ext-authz never accepts. Only that message, from
# that module, is ignored; pyproject.toml's pytest filters say the same for the tests. Upstream cause:
# spiffe/bundle/jwt_bundle/jwt_bundle.py (HewlettPackard/py-spiffe) lists DSA among its key types.
_warnings.filterwarnings(
    "ignore",
    message=r"DSA is deprecated",
    category=UserWarning,  # cryptography.utils.CryptographyDeprecationWarning, without importing it here
    module=r"spiffe\.bundle\.jwt_bundle\.jwt_bundle\Z",
)
