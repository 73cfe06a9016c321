"""Messages about bad input that a person can act on: what was wrong, what is expected.

Every boundary that takes input (commands, the CLI, the client, HTTP ingest) words its
refusals with these helpers, so that no message shows a library's own wording (pydantic's
``value.float: Input should be ...``, Python's ``'x' is not a valid Source``) or echoes a
large or unprintable input.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Iterable, Sequence
from enum import Enum
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # only the annotation: the HTTP ingest client imports this without pydantic
    from pydantic import ValidationError

E = TypeVar("E", bound=Enum)

#: A key shown as it is in a field's path; any other is quoted.
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_\-]{1,40}")

#: How pydantic names one member of a plain union in an error's location (``float``,
#: ``list[float]``, ``literal['auto']``, ``function-after[...]``): the member, not a field.
_UNION_MEMBER = re.compile(r"(?:float|int|bool|str|bytes|none|[a-z][a-z-]*\[.*\])", re.S)

#: What a value must be, by pydantic's error type (the type errors, whose own text says
#: "Input should be a valid dictionary").
_EXPECTED = {
    "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "bool_type": "true/false", "bool_parsing": "true/false",
    "string_type": "text", "string_unicode": "text", "bytes_type": "bytes",
    "dict_type": "an object (a dict)", "mapping_type": "an object (a dict)", "model_type": "an object (a dict)",
    "model_attributes_type": "an object (a dict)", "dataclass_type": "an object (a dict)",
    "list_type": "a list", "tuple_type": "a list", "set_type": "a list", "frozen_set_type": "a list",
    "iterable_type": "a list", "none_required": "null",
}
#: Errors that say only that the value has another type (or is not one of a literal's values).
_TYPE_ERRORS = frozenset({*_EXPECTED, "literal_error", "enum"})
#: Pydantic's sentences about sizes and bounds: "Input should be greater than 0",
#: "String should have at most 2000 characters".
_SHOULD = re.compile(r"(?:Input|String|List|Dictionary|Tuple|Set|Value|Data|Bytes) should (be|have) (.*)", re.S)


def clip(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters, saying so."""
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


def field_path(parts: Iterable[Any]) -> str:
    """``params.betas[1]``: where a value sits in a payload. A user-given key that is not a
    plain name is quoted (clipped, control characters and lone surrogates escaped)."""
    text = ""
    for p in parts:
        if isinstance(p, int):
            text += f"[{p}]"
        else:
            name = str(p)
            text += "." + (name if _PLAIN_KEY.fullmatch(name) else repr(clip(name, 40)))
    return text.lstrip(".")


def shown(value: Any, limit: int = 40) -> str:
    """A short rendering of a user-given value for a message: JSON-like scalars, clipped
    text (lone surrogates escaped), containers and objects by kind. Never raises, never
    converts a huge integer to text (Python refuses past 4300 digits)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if value.bit_length() <= 64 else f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return repr(clip(value, limit))  # repr escapes lone surrogates and control characters
    if isinstance(value, dict):
        return f"an object with {len(value)} key(s)"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)}"
    return f"a {type(value).__name__}"


def one_of(enum: type[E], value: Any, what: str) -> E:
    """``enum(value)``, or a ``ValueError`` that names the valid values (Python's own says
    only "'root' is not a valid CommandSource")."""
    if isinstance(value, enum):
        return value
    try:
        return enum(value)
    except (ValueError, TypeError):
        valid = ", ".join(str(m.value) for m in enum)
        raise ValueError(f"unknown {what} {shown(value)}; {what}s: {valid}") from None


def seconds(value: Any, what: str) -> float:
    """``value`` as a duration in seconds, or a ``ValueError``: a NaN or negative timeout
    would make a wait loop forever or not at all."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or (isinstance(value, float) and not math.isfinite(value)) or value < 0 or value > 1e9:
        raise ValueError(f"{what} must be a number of seconds from 0 to 1e9, got {shown(value)}")
    return float(value)


def whole(value: Any, what: str, minimum: int | None = 0) -> int | None:
    """An optional whole number (``>= minimum`` unless that is None) a caller gave (a step,
    a count, an offset), or an error saying so before it reaches an actor, which would
    answer with a traceback. NumPy's integers are integers too."""
    if value is None:
        return None
    bound = "" if minimum is None else f" >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what} must be an integer{bound}, got {shown(value)}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{what} must be an integer{bound}, got {shown(int(value))}")
    return int(value)


def names(value: Any, what: str) -> list[str] | None:
    """An optional list of names (metric keys, columns); one bare name is refused, since it
    would be read as a list of one-letter names."""
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{what} must be a list of names, such as [{'loss'!r}], got {shown(value)}")
    return list(value)


def describe_validation_error(
    err: ValidationError,
    limit: int = 5,
    hints: dict[str, str] | None = None,
    drop: Callable[[Any], bool] = lambda part: False,
) -> str:
    """A pydantic error as one plain sentence per problem (the first ``limit``): "value must
    be a number or true/false, got 'abc'". The errors of one union's members are one
    sentence. ``hints`` say what a field's pattern allows (by field name); ``drop`` leaves
    parts out of a location (a discriminated union's tag). User-given keys and values are
    clipped, so a message never echoes a large input."""
    groups = _grouped(err.errors(include_url=False), drop)
    parts = [_sentence(path, errors, hints or {}) for path, errors in groups[:limit]]
    if len(groups) > limit:
        parts.append(f"and {len(groups) - limit} more problem(s)")
    return "; ".join(parts)


def _grouped(errors: Iterable[Any], drop: Callable[[Any], bool]) -> list[tuple[tuple[Any, ...], list[Any]]]:
    """``(field path, errors)``: one entry per field, the members of a union together."""
    groups: list[tuple[tuple[Any, ...], list[Any]]] = []
    for e in errors:
        path = tuple(x for x in e["loc"] if not drop(x))
        member = len(path) > 1 and isinstance(path[-1], str) and _UNION_MEMBER.fullmatch(path[-1]) is not None
        if member:  # the next member of the union the previous error was about: one sentence
            path = path[:-1]
            if groups and groups[-1][0] == path and groups[-1][1][-1]["_member"]:
                groups[-1][1].append({**e, "_member": True})
                continue
        groups.append((path, [{**e, "_member": member}]))
    return groups


def _sentence(path: Sequence[Any], errors: list[Any], hints: dict[str, str]) -> str:
    name = field_path(path)
    # A member whose type matched but whose value did not (a bound, a check) says the most.
    specific = [e for e in errors if e["type"] not in _TYPE_ERRORS]
    if len(errors) > 1 and not specific:
        return _must_be(name, [_expected(e) for e in errors], errors[0].get("input"))
    e = (specific or errors)[0]
    kind = e["type"]
    quoted = repr(name) if _PLAIN_KEY.fullmatch(name) else name  # field_path quoted the others
    if kind == "extra_forbidden":
        return f"unknown field {quoted}"
    if kind == "missing":
        return f"missing field {quoted}"
    if kind == "string_pattern_mismatch":
        return f"{name}: {hints.get(str(path[-1]) if path else '', 'contains characters that are not allowed')}"
    if kind in _TYPE_ERRORS:
        return _must_be(name, [_expected(e)], e.get("input"))
    msg = clip(e["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, "), 300)
    if kind in ("value_error", "assertion_error"):  # our own checks' words: kept as they are
        mentioned = path and re.search(rf"\b{re.escape(str(path[-1]))}\b", msg)
        return msg if not name or mentioned else f"{name}: {msg}"
    should = _SHOULD.fullmatch(msg)
    if should:  # a bound or a size: "max_norm must be greater than 0, got -1"
        verb, rest = should.group(1), should.group(2).replace(" after validation", "")
        given = e.get("input")
        got = "" if ", not " in rest or isinstance(given, (dict, list, tuple, str)) else f", got {shown(given)}"
        return f"{name or 'the value'} must {verb} {rest}{got}"
    return f"{name}: {msg}" if name else msg


def _expected(e: Any) -> str:
    if e["type"] in ("literal_error", "enum"):
        options = str((e.get("ctx") or {}).get("expected", ""))
        return f"one of {options}" if " or " in options else options
    return _EXPECTED[e["type"]]


def _must_be(name: str, expected: list[str], given: Any) -> str:
    options = list(dict.fromkeys(expected))
    if "a number" in options and "an integer" in options:  # an integer is a number
        options.remove("an integer")
    what = " or ".join(options) if len(options) < 3 else ", ".join(options[:-1]) + " or " + options[-1]
    return f"{name or 'the value'} must be {what}, got {shown(given)}"
