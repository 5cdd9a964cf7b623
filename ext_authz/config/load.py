"""YAML → Settings. Every error names the file, the key and what was expected.

The settings types (``ext_authz/settings.py``) hold the keys, defaults, limits and checks; this module
only reads the file, resolves relative paths against its folder, and turns a validation failure into
one :class:`~ext_authz.errors.ConfigError` a person can act on.
"""

from __future__ import annotations

import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any

import orjson
import yaml
from pydantic import BaseModel, ValidationError

from ..errors import ConfigError
from ..settings import Settings
from .yamlread import read_yaml

__all__ = ["load_settings", "parse_settings", "read_config"]


def read_config(path: str | Path) -> bytes:
    p = Path(path)
    try:
        return p.read_bytes()
    except OSError as exc:
        raise ConfigError(str(p), "", f"cannot read the file ({exc.strerror or exc})") from exc


def load_settings(path: str | Path) -> Settings:
    return parse_settings(read_config(path), Path(path))


# A YAML file larger than this is parsed in a child process when the caller asks (a reload, while Checks
# are answered): libyaml's parser holds the GIL throughout, a quarter of a second for ten thousand rules.
ISOLATED_FROM = 256 * 1024
_CHILD = (
    Path(read_yaml.__code__.co_filename).read_text()  # yamlread.py's text, then the child's own
    + """
import sys, orjson
def plain(v):
    if isinstance(v, dict):
        return all(isinstance(k, str) and plain(x) for k, x in v.items())
    if isinstance(v, list):
        return all(plain(x) for x in v)
    return v is None or type(v) in (str, int, float, bool)
try:
    data = read_yaml(sys.stdin.buffer.read())
except Exception:
    sys.exit(3)  # the parent reads it again, and says what is wrong
if not plain(data):
    sys.exit(4)  # YAML-only values (dates, binary): the parent reads it itself
sys.stdout.buffer.write(orjson.dumps(data))
"""
)


def _yaml_elsewhere(text: bytes | str) -> Any:
    """The YAML document, parsed in a child process (this one's GIL stays free); None if the child could
    not or would not (the caller parses it here then, with the same result or error)."""
    raw = text.encode() if isinstance(text, str) else text
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD], input=raw, capture_output=True, timeout=120, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    try:
        return orjson.loads(done.stdout)
    except orjson.JSONDecodeError:
        return None


def parse_settings(text: bytes | str, source: Path, *, isolated: bool = False) -> Settings:
    """Settings from a config's text. ``isolated``: parse a large YAML file in a child process."""
    file = str(source)
    data = _json(text)
    if data is None and isolated and len(text) >= ISOLATED_FROM:
        data = _yaml_elsewhere(text)
    try:
        if data is None:
            data = read_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(file, "", f"not valid YAML: {exc}") from exc
    except RecursionError as exc:
        raise ConfigError(file, "", "not valid YAML: nested too deeply") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(file, "(top level)", f"expected a mapping, got {_kind(data)}")
    try:
        return Settings.model_validate(data, context={"base": source.parent, "source": source})
    except ValidationError as exc:
        key, expected = _first_error(exc)
        raise ConfigError(file, key, expected) from None
    except RecursionError as exc:
        raise ConfigError(file, "", "nested too deeply") from exc


def _json(text: bytes | str) -> Any:
    """A config written as JSON (YAML's subset, and what tools that generate policies write): read by a
    JSON parser, fifty times faster than YAML's for ten thousand rules. None if it is not JSON."""
    if text.lstrip()[:1] not in (b"{", "{"):
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None  # YAML that starts with a brace (a flow mapping): YAML reads it, or says why not


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number"}
    return names.get(type(value), type(value).__name__)


def _key(loc: tuple[int | str, ...]) -> str:
    """The config key an error is about: the path of settings fields (and mapping keys, list indexes)
    down to the setting itself; an index or key *inside* a scalar setting is dropped (a bad item of
    ``hosts`` is an error of ``hosts``)."""
    out = ""
    models: list[type[BaseModel]] = [Settings]
    expect_key = False  # the previous part was a mapping or list of settings sections
    for part in loc:
        if isinstance(part, int):
            if not expect_key:
                break
            out += f"[{part}]"
            expect_key = False
            continue
        if part.startswith(("function-", "lax-", "strict-", "json-")) or part in ("str", "int", "list"):
            continue  # pydantic's names for the branches of a union or a validator: not keys
        if expect_key:
            out += f".{part}" if out else part
            expect_key = False
            continue
        field = next((m.model_fields[part] for m in models if part in m.model_fields), None)
        if field is None:
            break
        out += f".{part}" if out else part
        inner = _models(field.annotation)
        if not inner:
            break  # a scalar setting (or a list or mapping of scalars): what follows is inside it
        models = inner
        origin = typing.get_origin(_unannotated(field.annotation))
        expect_key = origin in (tuple, list, dict) or _is_mapping(field.annotation)
    return out


def _unannotated(annotation: Any) -> Any:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _is_mapping(annotation: Any) -> bool:
    import collections.abc

    return typing.get_origin(_unannotated(annotation)) in (dict, collections.abc.Mapping)


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The settings types an annotation may hold (through Optional, Annotated, Mapping, tuple)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _models(typing.get_args(annotation)[0])
    if origin is not None or isinstance(annotation, types.UnionType):
        for arg in typing.get_args(annotation):
            found.extend(_models(arg))
    return found


def _allowed_keys(loc: tuple[int | str, ...]) -> list[str]:
    """The keys the section at ``loc`` accepts (for "unknown key" errors)."""
    candidates: list[type[BaseModel]] = [Settings]
    for part in loc:
        if isinstance(part, int):
            continue
        nxt: list[type[BaseModel]] = []
        for model in candidates:
            field = model.model_fields.get(part)
            if field is not None:
                nxt.extend(_models(field.annotation))
        if nxt:
            candidates = nxt
        # else: a mapping key (trust domain, issuer name): stay on the mapping's value type
    keys = {name for model in candidates for name, f in model.model_fields.items() if not f.exclude}
    return sorted(keys)


def _bounds(loc: tuple[int | str, ...]) -> tuple[int, int] | None:
    """(ge, le) of a bounded whole-number setting, for a message that gives both ends."""
    model: type[BaseModel] = Settings
    field = None
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        inner = _models(field.annotation)
        if inner:
            model = inner[0]
    if field is None:
        return None
    ge = le = None
    for meta in field.metadata:
        ge = getattr(meta, "ge", ge)
        le = getattr(meta, "le", le)
    return (int(ge), int(le)) if ge is not None and le is not None else None


def _first_error(exc: ValidationError) -> tuple[str, str]:
    err = exc.errors(include_url=False)[0]
    loc = tuple(err["loc"])
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    if kind == "config":  # a check across keys names its own key
        return str(ctx["key"]), str(ctx["message"])
    if kind == "config_sub":  # a check inside a section names the key within it
        return _key((*loc, *str(ctx["sub"]).split("."))), str(ctx["message"])
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than") and _bounds(loc):
        bounds = _bounds(loc)
        if bounds is not None:
            return _key(loc), f"expected a whole number from {bounds[0]} to {bounds[1]}, got {value!r}"
    if kind == "extra_forbidden":
        parent = _key(loc[:-1])
        name = str(loc[-1])
        return (
            f"{parent}.{name}" if parent else name
        ), f"unknown key; expected one of {_allowed_keys(loc[:-1])}"
    if kind == "missing":
        return _key(loc), "is required"
    if kind == "value_error":
        return _key(loc), str(ctx.get("error", err["msg"]))
    if kind == "literal_error":
        return _key(loc), f"expected one of {ctx['expected']}, got {value!r}"
    if kind in ("model_type", "dict_type", "mapping_type", "model_attributes_type"):
        return _key(loc), f"expected a mapping, got {_kind(value)}"
    if kind in ("tuple_type", "list_type"):
        return _key(loc), f"expected a list, got {_kind(value)}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return _key(loc), f"expected a whole number, got {value!r}"
    if kind in ("bool_type", "bool_parsing"):
        return _key(loc), f"expected true or false, got {value!r}"
    if kind == "string_type":
        return _key(
            loc
        ), f"expected a string, got {_kind(value) if isinstance(value, dict | list) else repr(value)}"
    if kind in ("greater_than_equal", "greater_than"):
        return _key(loc), f"expected a whole number of at least {ctx.get('ge', ctx.get('gt'))}, got {value!r}"
    msg = str(err["msg"]).replace("Input should be", "expected")
    return _key(loc), f"{msg}, got {value!r}" if not isinstance(
        value, dict | list
    ) else f"{msg}, got {_kind(value)}"
