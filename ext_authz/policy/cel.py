"""CEL conditions: checked against the typed declarations once, evaluated on plain maps, remembered.

An expression is compiled once, by the checker that knows every field (``types.TYPED_ENV``), and the
checked expression is serialized and loaded into the evaluation environment, whose variables are plain
maps (cheap to build per Check). There is no second compile.

What is compiled is remembered by its source text, so a reload compiles only the conditions that are
new; the memory holds what the last load used. Checking takes 25 µs for a simple condition and about
180 µs for one with a comprehension (10,000 rules: 0.25 to 1.8 s, once). Worker processes were tried:
starting them costs more (0.6 s) than they save below tens of thousands of conditions.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cel_expr_python import cel

from ..errors import Error
from .types import TYPED_ENV

__all__ = ["EVAL_ENV", "VARIABLES", "Activation", "CompileError", "compile_many", "variables_read"]

# What conditions and response values see, built on demand; and the names they may read.
Activation = Callable[[], Mapping[str, Any]]
VARIABLES = ("request", "source", "identity", "signals", "grants", "now")
_VARIABLE_RE = re.compile(r"\b(" + "|".join(VARIABLES) + r")\b")


def variables_read(source: str) -> frozenset[str]:
    """The top-level variables an expression reads (conservatively: any use of the word)."""
    return frozenset(_VARIABLE_RE.findall(source))


_DYN_MAP = cel.Type.Map(cel.Type.STRING, cel.Type.DYN)
EVAL_ENV = cel.NewEnv(
    variables={
        "request": _DYN_MAP,
        "source": _DYN_MAP,
        "identity": _DYN_MAP,
        "signals": _DYN_MAP,
        "grants": cel.Type.List(cel.Type.DYN),
        "now": cel.Type.TIMESTAMP,
    }
)
# An environment sets up how it converts Python values (a datetime into a timestamp) at its first
# compile; an expression only deserialized into a fresh one cannot take `now`. One compile here does it
# (tests/unit/policy/test_cel.py checks this in a fresh interpreter).
EVAL_ENV.compile("now == now")
_BOOL = ("BOOL", "DYN", "bool", "dyn")
# What each kind of expression may yield: a condition a boolean; a header or body value text (a
# number or a boolean is written as text); a metadata value anything JSON can hold.
_RETURNS: dict[str, tuple[tuple[str, ...] | None, str]] = {
    "condition": (_BOOL, "must be a boolean expression"),
    "text": (
        ("STRING", "DYN", "INT", "UINT", "DOUBLE", "BOOL", "string", "dyn", "int", "uint", "double", "bool"),
        "must yield text (a string, a number or a boolean)",
    ),
    "value": (None, ""),
}


class CompileError(Error, ValueError):
    """Not a valid CEL condition: the message says why (cel-cpp's words, on one line)."""


_lock = threading.Lock()
# kind -> source -> evaluation-ready expression, as the last load left it
_memories: dict[str, dict[str, Any]] = {kind: {} for kind in _RETURNS}


def forget() -> None:
    """Drop every remembered expression: the next load compiles from nothing (benchmarks measure that)."""
    with _lock:
        for memory in _memories.values():
            memory.clear()


def _check(source: str, kind: str = "condition") -> bytes:
    """Type-check ``source`` against what conditions see; the checked expression, serialized."""
    try:
        checked = TYPED_ENV.compile(source)
    except Exception as exc:  # cel-cpp reports compile errors as RuntimeError
        raise CompileError("not a valid CEL expression: " + " ".join(str(exc).split())) from exc
    rtype = str(checked.return_type())
    allowed, what = _RETURNS[kind]
    if allowed is not None and rtype not in allowed:
        raise CompileError(f"{what}, it yields {rtype}")
    data: bytes = checked.serialize()
    return data


def compile_many(sources: Sequence[str], kind: str = "condition") -> list[Any | CompileError]:
    """Each source as an evaluation-ready expression of ``kind`` (condition, text, value), or the
    CompileError that says why not; in order. Remembers exactly these for the next call (a reload)."""
    _memory = _memories[kind]
    with _lock:
        known = dict(_memory)
    errors: dict[str, CompileError] = {}
    for s in dict.fromkeys(s for s in sources if s not in known):
        try:
            known[s] = EVAL_ENV.deserialize(_check(s, kind))
        except CompileError as exc:
            errors[s] = exc
    with _lock:
        if errors:  # a load that fails keeps what the last good one used, and adds what compiled
            _memory.update(known)
        else:
            _memory.clear()
            _memory.update({s: known[s] for s in sources})
    return [errors[s] if s in errors else known[s] for s in sources]
