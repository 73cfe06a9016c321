"""``KEY=VALUE`` settings of the agents, read alike from the CLI (one per flag) and the
UI (one text field, comma separated): ``--track live=eval/live/loss``,
``--update-ceiling transformer.h.0=0.008``."""

from __future__ import annotations

from collections.abc import Iterable


def split_items(text: str | None) -> list[str]:
    """A field's ``A=1, B=2`` (commas or semicolons) as its items."""
    return [item.strip() for item in (text or "").replace(";", ",").split(",") if item.strip()]


def pairs(items: Iterable[str], form: str) -> dict[str, str]:
    """``KEY=VALUE`` items as a dict. ``ValueError`` saying ``form`` for one that is not."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"{form}, not {item!r}")
        out[key.strip()] = value.strip()
    return out


def numbers(items: Iterable[str], form: str) -> dict[str, float]:
    """``KEY=NUMBER`` items as a dict (``ValueError`` saying ``form``); what range a number
    must be in is for whoever takes them to say."""
    out = {}
    for item in items:
        (key, value), = pairs([item], form).items()
        try:
            out[key] = float(value)
        except ValueError:
            raise ValueError(f"{form}, not {item!r}") from None
    return out


__all__ = ["numbers", "pairs", "split_items"]
