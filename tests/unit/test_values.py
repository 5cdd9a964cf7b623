"""@value: the same class a frozen, slotted dataclass is, with a cheaper __init__."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import pytest

from ext_authz import model
from ext_authz.values import value


def point_class(decorate: Callable[[type], Any]) -> Any:
    """One class body, decorated two ways: ``@value`` and the plain frozen, slotted dataclass whose
    behaviour it must keep."""

    class Point:
        x: int
        y: int = 0
        tags: tuple[str, ...] = dataclasses.field(default_factory=tuple)
        meta: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False, hash=False)
        norm: int = dataclasses.field(init=False, default=-1)
        label: str = dataclasses.field(init=False, default="")

        def __post_init__(self) -> None:
            object.__setattr__(self, "norm", abs(self.x) + abs(self.y))
            object.__setattr__(self, "label", f"{self.x},{self.y}")

    return decorate(Point)


Point = point_class(value)
Reference = point_class(dataclasses.dataclass(frozen=True, slots=True))


def fields_of(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


CALLS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    ((1,), {}),
    ((1, 2), {}),
    ((), {"x": 3, "y": -4}),
    ((5,), {"tags": ("a", "b")}),
    ((5, 6, ("t",), {"k": 1}), {}),
    ((), {"y": 7, "x": 8, "meta": {"m": 2}}),
]


@pytest.mark.parametrize(("args", "kwargs"), CALLS)
def test_constructs_what_the_dataclass_constructs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    assert fields_of(Point(*args, **kwargs)) == fields_of(Reference(*args, **kwargs))


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((), {}), ((1, 2, (), {}, 9), {}), ((1,), {"x": 2}), ((1,), {"norm": 3}), ((1,), {"z": 1})],
)
def test_refuses_what_the_dataclass_refuses(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    with pytest.raises(TypeError):
        Reference(*args, **kwargs)
    with pytest.raises(TypeError):
        Point(*args, **kwargs)


def test_factories_give_each_instance_its_own() -> None:
    a, b = Point(1), Point(1)
    assert a.meta == {} and a.meta is not b.meta


def test_still_frozen_slotted_hashable_and_replaceable() -> None:
    p = Point(1, 2, ("t",))
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.x = 5
    with pytest.raises((AttributeError, TypeError)):
        p.other = 1
    assert not hasattr(p, "__dict__")
    assert p == Point(1, 2, ("t",), {"ignored": True}) and hash(p) == hash(Point(1, 2, ("t",)))
    q = dataclasses.replace(p, y=5)
    assert (q.x, q.y, q.norm, q.label) == (1, 5, 6, "1,5")
    assert (
        repr(Point(1))
        == repr(Reference(1))
        == f"{Point.__qualname__}(x=1, y=0, tags=(), meta={{}}, norm=1, label='1,0')"
    )


VALUE_TYPES = [
    model.HttpRequest,
    model.Credentials,
    model.RequestContext,
    model.Identity,
    model.Principal,
    model.Decision,
    model.ShadowResult,
]


@pytest.mark.parametrize("cls", VALUE_TYPES, ids=lambda c: c.__name__)
def test_the_check_path_values_use_it(cls: type) -> None:
    init = vars(cls)["__init__"]
    assert init.__qualname__ == f"{cls.__qualname__}.__init__"
    assert "__dataclass_builtins_object__" not in init.__code__.co_names  # not the generated one


def test_model_values_keep_their_defaults() -> None:
    empty: Mapping[str, str] = MappingProxyType({})
    ctx = model.RequestContext(None, "", "", empty, model.Credentials())
    assert (ctx.request_id, ctx.header_count, ctx.header_bytes, ctx.body_bytes) == ("", 0, 0, 0)
    d = model.Decision("d", True, 200, "allowed")
    assert (
        d.principal == model.Principal() and d.principal is not model.Decision("e", True, 200, "x").principal
    )
    assert (d.shadow, d.effects, d.challenge) == ((), (), "")
    ident = model.Identity(kind="oidc", issuer="https://idp", subject="alice")
    assert (ident.principal, ident.scope, ident.channel) == ("https://idp#alice", "https://idp", "bearer")


@value
class WithInitVar:
    x: int
    scale: dataclasses.InitVar[int] = 1
    scaled: int = dataclasses.field(init=False, default=0)

    def __post_init__(self, scale: int) -> None:
        object.__setattr__(self, "scaled", self.x * scale)


@value
class WithKeywordOnly:
    x: int
    y: int = dataclasses.field(default=2, kw_only=True)


def test_shapes_it_does_not_handle_keep_the_generated_init() -> None:
    assert WithInitVar(3, 5).scaled == 15 and WithInitVar(3).scaled == 3
    assert (WithKeywordOnly(1).y, WithKeywordOnly(1, y=4).y) == (2, 4)
    with pytest.raises(TypeError):
        WithKeywordOnly(1, 4)  # type: ignore[call-arg]
