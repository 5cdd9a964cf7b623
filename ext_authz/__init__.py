"""ext-authz: continuous zero-trust authorization for Envoy."""

__version__ = "0.1.0"
