"""YAML → plain Python, as ``yaml.safe_load`` reads it, faster for large documents.

libyaml (PyYAML's C parser) composes the node tree; PyYAML's safe constructor then builds the values
through a generator per mapping and per sequence, about 40% of the time for a ten-thousand-rule policy.
Here mappings, sequences and strings are built directly; every other node (numbers, booleans, null,
timestamps, binary, sets, merge keys ``<<``, non-scalar keys) goes to PyYAML's own constructor, so
the result is the one ``yaml.safe_load`` gives. Aliases stay shared objects, as there.

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


def read_yaml(text: bytes | str) -> Any:
    """The single document in ``text`` (None for an empty one). Raises what ``yaml.safe_load`` raises."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        return None if node is None else _Build(loader).value(node)
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
            out.extend(self.value(item) for item in node.value)
        else:
            out = self.loader.construct_object(node, deep=True)
        self.made[id(node)] = out
        return out

    @staticmethod
    def _plain_keys(node: Any) -> bool:
        """Every key a scalar that is not a merge (``<<``): those go to PyYAML's constructor, which says
        what is wrong with an unhashable key and how merges fold."""
        return all(isinstance(k, yaml.ScalarNode) and k.tag != _MERGE for k, _ in node.value)
