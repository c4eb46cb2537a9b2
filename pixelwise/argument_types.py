"""Whether a config's value fits the type a builder annotates its argument with: a YAML ``"4"``, ``4.5`` or
``true`` where a whole number is meant was a TypeError deep in torch, or (a bool is an int) silently class 1.
One check for the registries of models and losses, whatever way a builder's module writes its annotations."""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Callable
from typing import Any

from .errors import ConfigError


def annotation_text(annotation: Any) -> str | None:
    """An annotation as the text :func:`fits` reads (``"int | None"``, ``"Literal['a', 'b']"``), whether the
    builder's module postpones annotations (strings) or not (types); None where there is none."""
    if annotation is inspect.Parameter.empty:
        return None
    if isinstance(annotation, str):
        return annotation
    if isinstance(annotation, type):
        return "None" if annotation is type(None) else annotation.__name__
    return re.sub(r"\b(?:typing|collections\.abc)\.", "", str(annotation)).replace("NoneType", "None")


def fits(value: Any, annotation: str) -> bool:
    """Whether ``value`` (from a YAML config) is of the annotated type: ``int``, ``float`` (an int too), ``bool``,
    ``str``, ``None``, ``Sequence[int]``, ``Literal[...]``, unions of them; any other type (a ``Pretrained``
    switch or path, a list of weights) is the builder's to check."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    plain = {
        "int": number and isinstance(value, int),
        "float": number,
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "None": value is None,
    }
    for part in (p.strip() for p in annotation.split(" | ")):
        if part.startswith("Literal["):
            fit = value in ast.literal_eval(f"({part[len('Literal[') : -1]},)")
        elif part == "Sequence[int]":
            fit = isinstance(value, (list, tuple)) and all(
                isinstance(v, int) and not isinstance(v, bool) for v in value
            )
        else:
            fit = plain.get(part, True)  # a type of the builder's own: its to check
        if fit:
            return True
    return False


def check_argument_types(what: str, builder: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    """A ConfigError (``what: key=value should be int``) for the first of ``kwargs`` that does not fit the type
    ``builder`` annotates it with."""
    annotations = {p.name: p.annotation for p in inspect.signature(builder).parameters.values()}
    for key, value in kwargs.items():
        annotation = annotation_text(annotations.get(key, inspect.Parameter.empty))
        if annotation is not None and not fits(value, annotation):
            wanted = re.sub(r"Literal\[(.*)\]", r"one of \1", annotation).replace("Sequence[int]", "a list of int")
            raise ConfigError(f"{what}: {key}={value!r} should be {wanted}")
