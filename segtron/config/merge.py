"""Checked merging of plain values into a CfgNode tree.

yacs merges with terse errors ("Non-existent config key: X"). Here every rejected key names the
closest valid keys and where the value came from (a file or the command line), and every type
mismatch states the expected type, the default and how to write a valid value.
"""

import ast
import difflib
from typing import Any, Dict, Iterator, List, Tuple

from yacs.config import CfgNode as _YacsNode

# Values a config leaf may hold.
_LEAF_TYPES = (tuple, list, str, int, float, bool, type(None))


def iter_full_keys(node: _YacsNode, prefix: str = "") -> Iterator[Tuple[str, Any]]:
    """Yield ``(full_key, value)`` for every leaf under ``node``, e.g. ``("SOLVER.BASE_LR", 0.001)``."""
    for key, value in node.items():
        full_key = f"{prefix}{key}"
        if isinstance(value, _YacsNode):
            yield from iter_full_keys(value, full_key + ".")
        else:
            yield full_key, value


def closest_keys(root: _YacsNode, full_key: str, n: int = 3) -> List[str]:
    """Return up to ``n`` existing full keys of ``root`` that look most like ``full_key``."""
    candidates = [k for k, _ in iter_full_keys(root)]
    # Group names are valid targets too (e.g. a typo in "MODEL.RPNN").
    candidates += _group_keys(root)
    matches = difflib.get_close_matches(full_key, candidates, n=n, cutoff=0.6)
    if not matches:
        # Fall back to comparing the last component only ("BASE_LRR" vs "BASE_LR").
        leaf = full_key.rsplit(".", 1)[-1]
        by_leaf = {k.rsplit(".", 1)[-1]: k for k in candidates}
        matches = [by_leaf[m] for m in difflib.get_close_matches(leaf, list(by_leaf), n=n)]
    return matches


def _group_keys(node: _YacsNode, prefix: str = "") -> List[str]:
    out = []
    for key, value in node.items():
        if isinstance(value, _YacsNode):
            out.append(prefix + key)
            out += _group_keys(value, prefix + key + ".")
    return out


def unknown_key_error(root: _YacsNode, full_key: str, source: str) -> KeyError:
    """Build the KeyError raised for a key that is not in the config."""
    suggestions = closest_keys(root, full_key)
    hint = (
        "Did you mean: " + ", ".join(suggestions) + "?"
        if suggestions
        else "No similar key exists; see segtron/config/defaults.py for all keys."
    )
    return KeyError(
        f"Unknown config key '{full_key}' (from {source}). {hint} "
        "If it is a key of a project, make sure the project is imported and adds it to the "
        "config before the file is merged."
    )


def coerce_value(new: Any, old: Any, full_key: str, source: str) -> Any:
    """Return ``new`` converted to the type of the current value ``old``, or raise ValueError.

    Accepted: the same type; None in place of anything or anything in place of None; list and
    tuple for each other (converted to the default's type); an int where a float is expected.
    A string given for a non-string key is read as a Python literal first, as yacs does, so
    Detectron2 YAML such as ``TRAIN: ("coco_2017_train",)`` or ``STEPS: (60000, 80000)`` works.
    """
    if isinstance(new, str) and not isinstance(old, str):
        try:
            new = ast.literal_eval(new)
        except (ValueError, SyntaxError):
            pass
    if not isinstance(new, _LEAF_TYPES):
        raise ValueError(
            f"Config key '{full_key}' (from {source}) got a {type(new).__name__}; config values must "
            "be one of str, int, float, bool, list, tuple or None."
        )
    if type(new) is type(old) or new is None or old is None:
        return new
    if isinstance(new, (list, tuple)) and isinstance(old, (list, tuple)):
        return _like_sequence(new, old)
    if isinstance(old, float) and isinstance(new, int) and not isinstance(new, bool):
        return float(new)
    raise ValueError(
        f"Config key '{full_key}' (from {source}) expects {type(old).__name__} like its default "
        f"{old!r}, got {type(new).__name__} {new!r}. {_type_hint(old)}"
    )


def _like_sequence(new, old):
    """Convert sequence ``new`` to ``old``'s sequence type, recursively for nested sequences
    (so a YAML list of lists read back into a tuple-of-tuples default is a tuple of tuples)."""
    template = old[0] if len(old) else None
    items = []
    for item in new:
        if isinstance(item, (list, tuple)) and isinstance(template, (list, tuple)):
            item = _like_sequence(item, template)
        elif isinstance(template, float) and isinstance(item, int) and not isinstance(item, bool):
            item = float(item)
        items.append(item)
    return type(old)(items)


def _type_hint(old: Any) -> str:
    if isinstance(old, bool):
        return "Write True or False."
    if isinstance(old, (int, float)):
        return "Write a number, e.g. 0.02 or 1000."
    if isinstance(old, (list, tuple)):
        return "On the command line write a list in brackets, e.g. \"[640, 672, 704]\"."
    if isinstance(old, str):
        return "On the command line quote strings that look like numbers, e.g. \"'1'\"."
    return ""


def merge_dict_into_node(root: _YacsNode, node: _YacsNode, values: Dict[str, Any], source: str,
                         prefix: str = "") -> None:
    """Merge a nested dict of values into ``node`` (a sub-tree of ``root``), checking every key.

    Nested dicts merge key by key; any other value (lists included) replaces the old one.
    Raises KeyError for unknown keys (unless the node allows new keys) and ValueError for
    values of the wrong type. ``source`` names where the values came from, for messages.
    """
    for key, value in values.items():
        full_key = prefix + key
        if key not in node:
            if not node.is_new_allowed():
                raise unknown_key_error(root, full_key, source)
            node[key] = _as_node(type(root), value)
            continue
        current = node[key]
        if isinstance(current, _YacsNode):
            if not isinstance(value, dict):
                raise ValueError(
                    f"Config key '{full_key}' (from {source}) is a group of keys, not a value; set "
                    f"one of its members instead, e.g. {full_key}.{next(iter(current), 'KEY')}."
                )
            merge_dict_into_node(root, current, value, source, full_key + ".")
        else:
            node[key] = coerce_value(value, current, full_key, source)


def _as_node(node_type, value):
    if isinstance(value, dict):
        return node_type(value, new_allowed=True)
    return value
