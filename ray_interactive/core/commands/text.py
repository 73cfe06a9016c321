"""Commands as a person types them: ``KIND key=value ...`` (the CLI's ``send``, the UI's
command form). Values are JSON where they parse (``1e-4``, ``[0.9, 0.95]``, ``true``,
``null``), text otherwise; a kind's text fields (names, paths, ids) are always text, and
bare keys that are not a kind's field go into its ``spread`` field (``update_optimizer
lr=1e-4`` sets ``params.lr``)."""

from __future__ import annotations

import json
import shlex
import typing
from typing import Any

from ray_interactive.core.commands.base import COMMON_FIELDS, KINDS


def parse_value(text: str) -> Any:
    """``1e-4`` -> 0.0001, ``[0.9,0.95]`` -> list, ``true`` -> True, else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_assignments(items: list[str], text_keys: frozenset[str] = frozenset()) -> dict[str, Any]:
    """``["a=1", "b.c=x"]`` -> ``{"a": 1, "b": {"c": "x"}}``; keys in ``text_keys`` keep
    their text as it is (``module=3`` names the module "3", as ``nn.Sequential`` does).
    ``ValueError`` for an item that is not ``key=value``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value, got {item!r}")
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"{key!r} conflicts with another assignment")
        node[leaf] = value if key in text_keys else parse_value(value)
    return out


def text_fields(kind: str) -> frozenset[str]:
    """Fields of a command kind whose value is text (names, paths, ids): a typed value for
    one of them is never read as JSON."""
    model = KINDS.get(kind)
    if model is None:
        return frozenset()
    return frozenset(name for name, f in model.model_fields.items() if f.annotation in (str, typing.Optional[str]))


def command_payload(kind: str, assignments: dict[str, Any]) -> dict[str, Any]:
    """A command from a kind and its arguments: keys that are not the kind's fields go into
    its ``spread`` field (``update_optimizer lr=1e-4``, ``set_data_mixture base=0.7``)."""
    payload: dict[str, Any] = {"kind": kind}
    model = KINDS.get(kind)
    spread = model.spread if model is not None else None
    fields = set(model.model_fields) if model is not None else set()
    for key, value in assignments.items():
        if spread and key not in fields and key not in COMMON_FIELDS:
            payload.setdefault(spread, {})[key] = value
        else:
            payload[key] = value
    return payload


def payload_from_text(kind: str, text: str) -> dict[str, Any]:
    """``payload_from_text("update_optimizer", "lr=3e-4 group=decay")``; ``ValueError`` for an
    unknown kind or text that is not ``key=value`` pairs (quote values with spaces)."""
    if kind not in KINDS:
        raise ValueError(f"unknown command kind {kind!r}; kinds: {', '.join(sorted(KINDS))}")
    try:
        items = shlex.split(text or "")
    except ValueError as e:
        raise ValueError(f"cannot read the arguments: {e}") from None
    return command_payload(kind, parse_assignments(items, text_fields(kind)))
