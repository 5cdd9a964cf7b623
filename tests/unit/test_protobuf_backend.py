"""protobuf must run on its upb backend: the pure-Python one is far too slow for the Check path."""

from __future__ import annotations

from google.protobuf.internal import api_implementation


def test_protobuf_runs_on_upb() -> None:
    assert api_implementation.Type() == "upb"
