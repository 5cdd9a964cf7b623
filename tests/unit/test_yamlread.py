"""config/yamlread.read_yaml gives what yaml.safe_load gives: on generated documents, on YAML's odd corners
(aliases, merges, timestamps, YAML 1.1 numbers and booleans, explicit tags), on every YAML file in the
repository, and with the same errors."""

from __future__ import annotations

import datetime as dt
import gc
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from ext_authz.config import parse_settings, read_config
from ext_authz.config.yamlread import read_yaml
from ext_authz.loader import build_engine

REPO = Path(__file__).resolve().parents[2]

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from(["yes", "No", "on", "~", "0x1f", "0o17", "017", "1_000", "1:30", "2026-12-07", ".inf"])
)
documents = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=5)
    ),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(documents, st.sampled_from([None, False, True]))
def test_generated_documents_read_as_safe_load_reads_them(doc: Any, flow: bool | None) -> None:
    text = yaml.safe_dump(doc, default_flow_style=flow, allow_unicode=True)
    assert read_yaml(text) == yaml.safe_load(text)
    assert read_yaml(text.encode()) == yaml.safe_load(text)


ODD = [
    "",
    "# nothing\n",
    "a: yes\nb: off\nc: ~\nd: 0x1F\ne: 1_000\nf: 017\ng: 1:30\nh: .NaN_is_text\ni: -.inf\n",
    "when: 2026-12-07\nat: 2026-12-07T10:00:00Z\n",
    "blob: !!binary aGVsbG8=\n",
    "s: !!set {a, b}\n",
    "o: !!omap [a: 1, b: 2]\n",
    "n: !!str 123\nm: !!int '7'\n",
    "base: &b {x: 1, y: 2}\nderived:\n  <<: *b\n  y: 3\n",
    "list: &l [1, 2]\nagain: *l\n",
    "? [a, b]\n: 1\n",  # a sequence as a key: PyYAML refuses it, so do we
    "a: 1\na: 2\n",  # a repeated key: the last wins, as in safe_load
    "{1: one, 2.5: two, null: three, true: four}\n",
    "x: !!python/object:os.system ls\n",  # not safe: refused by both
    "a: [1, 2\n",  # not YAML
    "--- 1\n--- 2\n",  # two documents
    "a: {=: x}\n",  # a plain `=` key: PyYAML's mappings make it a string again
    "a: &A\n  x: 1\n  y: [ {<<: {z: 2}, back: *A} ]\n",  # a merge beside an alias of what encloses it
    "[" * 300 + "]" * 300,  # deep nesting (with the reviewers' reproductions, 2026-12-07)
    "&a !!pairs [ {k: *a} ]\n",  # containers only PyYAML builds, aliasing what encloses them
    "&l [ !!omap [ {k: *l} ] ]\n",
    "s: &s !!set {a, b}\nt: *s\n",
    "key: 'quoted: text'\nother: \"esc\\u00e9\"\nblock: |\n  line\n  next\nfolded: >\n  a\n  b\n",
]


def _either(text: str) -> tuple[str, Any]:
    try:
        return ("value", repr(yaml.safe_load(text)))  # repr: a document may hold itself
    except yaml.YAMLError as exc:
        return ("error", type(exc))


@pytest.mark.parametrize("text", ODD)
def test_odd_corners_read_as_safe_load_reads_them(text: str) -> None:
    expected = _either(text)
    try:
        got: tuple[str, Any] = ("value", repr(read_yaml(text)))
    except yaml.YAMLError as exc:
        got = ("error", type(exc))
    assert got == expected


def test_types_are_safe_loads_types() -> None:
    doc = read_yaml("when: 2026-12-07\nflag: yes\nn: 0x10\nblob: !!binary aGk=\n")
    assert doc == {"when": dt.date(2026, 12, 7), "flag": True, "n": 16, "blob": b"hi"}


def test_an_alias_is_the_anchored_object_itself() -> None:
    doc = read_yaml("a: &x [1, 2]\nb: *x\nc: &m {k: v}\nd: *m\n")
    assert doc["a"] is doc["b"]
    assert doc["c"] is doc["d"]


def test_a_mapping_that_aliases_itself() -> None:
    doc = read_yaml("&top\nself: *top\nn: 1\n")
    assert doc["self"] is doc
    assert doc["n"] == 1


def test_every_yaml_file_in_the_repository_reads_the_same() -> None:
    files = [
        p
        for p in REPO.rglob("*.y*ml")
        if not ({".venv", ".git", "node_modules", "site"} & set(p.relative_to(REPO).parts))
        and "templates" not in p.parts  # helm templates are not YAML until rendered
    ]
    assert len(files) > 20
    compared = 0
    for path in files:
        text = path.read_text()
        try:
            expected = list(yaml.safe_load_all(text))
        except yaml.YAMLError:
            continue
        if len(expected) != 1:
            continue
        assert read_yaml(text) == expected[0], path
        compared += 1
    assert compared > 20


def test_an_engine_of_many_rules_makes_no_cyclic_garbage(tmp_path: Path) -> None:
    """load_engine pauses the collector and freezes what it made (collect.py): cyclic garbage made by a
    load would then never be freed, one more heap of it on every reload."""
    rules = "".join(
        f"  - name: r{i}\n    match: {{hosts: [h{i}.internal], paths: ['/a/{i}/*'], methods: [GET]}}\n"
        f"    when: 'identity.kind == \"workload\"'\n"
        for i in range(300)
    )
    path = tmp_path / "config.yaml"
    path.write_text("allow_empty: true\nrules:\n" + rules)
    data = read_config(path)
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        engine = build_engine(parse_settings(data, path), data)
        assert len(engine.policy.rules) == 300
        del engine
        assert gc.collect() == 0
    finally:
        if was:
            gc.enable()
