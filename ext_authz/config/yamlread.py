"""YAML → plain Python, as ``yaml.safe_load`` reads it, faster for large documents.

libyaml (PyYAML's C parser) composes the node tree; PyYAML's safe constructor then builds the values
through a generator per mapping and per sequence, about 40% of the time for a ten-thousand-rule policy.
Here mappings, sequences and strings are built directly, and other scalars (numbers, booleans, null,
timestamps, binary) by PyYAML's own constructor; a document with a merge key (``<<``), a ``=`` key, a
non-scalar key, a set, an omap or pairs anywhere, or nested deeper than this can recurse, is built by
PyYAML whole (they may alias what encloses them), so the result is the one ``yaml.safe_load`` gives.
Aliases stay shared objects, as there.

This module imports only PyYAML: the child process that parses large files on reload runs it too.
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["read_yaml"]

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"
_VALUE = "tag:yaml.org,2002:value"  # a plain `=` key: PyYAML's mappings turn it back into a string


class _Whole(Exception):
    """The document has what only PyYAML's constructor builds right: it builds all of it."""


def read_yaml(text: bytes | str) -> Any:
    """The single document in ``text`` (None for an empty one). Raises what ``yaml.safe_load`` raises."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            return _Build(loader).value(node)
        except (_Whole, RecursionError):  # (nested deeper than frames allow here: PyYAML may manage)
            return loader.construct_document(node)
    finally:
        loader.dispose()


class _Build:
    __slots__ = ("loader", "made")

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.made: dict[int, Any] = {}  # id(node) -> value: an alias yields the anchored value itself

    def value(self, node: Any) -> Any:
        made = self.made.get(id(node))
        if made is not None or id(node) in self.made:
            return made
        tag = node.tag
        if tag == _STR and isinstance(node, yaml.ScalarNode):
            out: Any = node.value
        elif tag == _MAP and isinstance(node, yaml.MappingNode) and self._plain_keys(node):
            out = self.made[id(node)] = {}  # before its values: a value may alias its own mapping
            for key_node, value_node in node.value:
                out[self.value(key_node)] = self.value(value_node)
        elif tag == _SEQ and isinstance(node, yaml.SequenceNode):
            out = self.made[id(node)] = []
            for item in node.value:  # (a loop, not a generator: one frame per level of nesting)
                out.append(self.value(item))
        elif isinstance(node, yaml.ScalarNode):  # numbers, booleans, null, timestamps, binary: immutable
            out = self.loader.construct_object(node, deep=True)
        else:  # a set, an omap, pairs: containers only PyYAML builds, which may alias ours
            raise _Whole
        self.made[id(node)] = out
        return out

    @staticmethod
    def _plain_keys(node: Any) -> bool:
        """Every key a plain scalar; else PyYAML builds the whole document (_Whole), and says what is
        wrong with an unhashable key."""
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag in (_MERGE, _VALUE):
                raise _Whole
        return True
