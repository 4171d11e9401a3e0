"""One way to validate settings: frozen dataclasses checked from their type hints.

Every options class of flatprep (cleaning, shards, model, training) is a frozen
dataclass whose ``__post_init__`` calls :func:`check_fields`. The type hint of
each field says what it accepts (``int``, ``float``, ``bool``, ``str``,
``Literal[...]`` choices, ``X | None``, ``tuple[int, int]``, ``tuple``,
``dict``); a field may add a range rule through :func:`rule`. A wrong value
raises the class's own error naming the class, the field, what it must be and
the value received::

    CleanOptions: target_tr must be None or a positive finite TR in s; got -1.0

Values are converted to the hinted type (an int given for a float field
becomes a float; numpy scalars become Python ones), so instances compare and
serialise the same however they were made. :func:`parse_text` turns command
line or TOML strings into the hinted type first.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal

import numpy as np

from .exceptions import HintMismatch

_RULE = "flatprep_rule"


def rule(must: str, check: Callable[[Any], bool]) -> dict:
    """Field metadata: ``check(value)`` must hold (after type conversion); ``must`` says what a value must be.

    Use as ``field(default=..., metadata=rule("an int >= 1", lambda v: v >= 1))``;
    ``None`` is never passed to ``check``.
    """
    return {_RULE: (must, check)}


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


#: Plain types: which values each accepts, and how an accepted value is stored.
_PLAIN = {
    bool: (lambda value: isinstance(value, (bool, np.bool_)), bool),
    int: (_is_int, int),
    float: (_is_real, float),
    str: (lambda value: isinstance(value, str), str),
    dict: (lambda value: isinstance(value, Mapping), dict),
}


def text_none(value):
    """``None`` for the text ``"none"`` or ``"null"`` (case and spaces ignored), else ``value`` unchanged.

    The one spelling of "no value" in TOML files (which have no null), saved
    JSON configs and command lines (``--detrend none``).
    """
    if isinstance(value, str) and value.strip().lower() in ("none", "null"):
        return None
    return value


def describe(hint) -> str:
    """What a value of type ``hint`` is, in words (``"None or an int"``)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        others = [a for a in args if a is not type(None)]
        if len(others) == 1 and typing.get_origin(others[0]) is Literal:
            return describe(others[0]) + (", None" if type(None) in args else "")
        return ("None or " if type(None) in args else "") + " or ".join(map(describe, others))
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin is tuple and args and args[-1] is not Ellipsis:
        return f"a tuple of {len(args)} ({', '.join(describe(a) for a in args)})"
    names = {int: "an int", float: "a number", bool: "True or False", str: "a string",
             tuple: "a sequence", dict: "a mapping"}
    return names.get(origin or hint, getattr(hint, "__name__", str(hint)))


def convert(value, hint):
    """``value`` as the type ``hint`` names, or :class:`HintMismatch`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in args:
            if option is type(None):
                continue
            try:
                return convert(value, option)
            except HintMismatch:
                pass
        raise HintMismatch
    if origin is Literal:
        # Booleans compare equal to 0/1: match on type as well as value.
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise HintMismatch
    if origin is tuple or hint is tuple:
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (tuple, list, np.ndarray)):
            raise HintMismatch
        if args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise HintMismatch
            return tuple(convert(v, a) for v, a in zip(value, args))
        item = args[0] if args else None
        return tuple(v if item is None else convert(v, item) for v in value)
    if (origin or hint) in _PLAIN:
        accepts, store = _PLAIN[origin or hint]
        if accepts(value):
            return store(value)
        raise HintMismatch
    if hint is Any:
        return value
    raise TypeError(f"check_fields does not know the type hint {hint!r}")  # a programming error


def check_fields(instance, error: type[Exception]) -> None:
    """Check every field of a frozen dataclass ``instance`` against its hint and rule; convert in place.

    Raises
    ------
    error
        ``"<Class>: <field> must be <what>; got <value>"`` for the first bad field.
    """
    owner = type(instance)
    hints = typing.get_type_hints(owner)
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        must, check = f.metadata.get(_RULE, (None, None))
        try:
            converted = convert(value, hints[f.name])
            if check is not None and converted is not None and not check(converted):
                raise HintMismatch
        except HintMismatch:
            raise error(f"{owner.__name__}: {f.name} must be {must or describe(hints[f.name])}; "
                        f"got {value!r}") from None
        object.__setattr__(instance, f.name, converted)


def replace_fields(instance, values: Mapping[str, Any], error: type[Exception], *, what: str = "setting"):
    """A copy of ``instance`` with ``values`` set; unknown keys raise ``error`` listing the known ones."""
    known = [f.name for f in dataclasses.fields(instance)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise error(f"unknown {what}(s) {', '.join(unknown)}; known {what}s: {', '.join(known)}")
    return dataclasses.replace(instance, **values)


def _base_types(hint) -> set:
    """The plain types a hint admits (``int | None`` -> {int, NoneType}; Literal -> its values' types)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return set().union(*map(_base_types, args))
    if origin is Literal:
        return {type(a) for a in args}
    return {object} if hint is Any else {origin or hint}


def parse_text(text: str, hint):
    """A command-line string as the type ``hint`` names (``"true"`` -> True, ``"[1, 2]"`` -> [1, 2]).

    Text for a string field stays text; text that does not parse is returned
    unchanged, so :func:`check_fields` reports it with the field's name.
    """
    kinds = _base_types(hint)
    stripped = text.strip()
    if type(None) in kinds and text_none(stripped) is None:
        return None
    if str in kinds:
        return text
    if bool in kinds and stripped.lower() in ("true", "false", "yes", "no", "1", "0"):
        return stripped.lower() in ("true", "yes", "1")
    for parse in (int, float):
        try:
            return parse(stripped)
        except ValueError:
            pass
    return json_or_text(stripped)


def json_or_text(text: str):
    """``text`` read as JSON (``"[1, 2]"`` -> [1, 2]), or ``text`` itself when it is not JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
