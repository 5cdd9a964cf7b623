"""Policy as code: rules with ``match`` selectors and CEL ``when`` conditions."""

from .engine import Policy, PolicyResult, compile_policy

__all__ = ["Policy", "PolicyResult", "compile_policy"]
