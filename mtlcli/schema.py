"""Schema problems as one line each: what is wrong with a name or an option, and what was meant.

The bottom floor that the recipe and every registry (methods, encoders, datasets) share: pydantic errors
turned into short messages ("must be > 0, got -1"), and "unknown name -> did you mean -> the choices".
Imports neither torch nor any registry.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

Problem = tuple[tuple[str | int, ...], str]  # (key path, message)

_FRIENDLY = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "missing": "required",
    "too_short": "needs at least {min_length} item(s)",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
}


def describe_error(err: Any) -> str:
    """A short message for one pydantic error: what is expected and what was found."""
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "literal_error":
        message = f"must be one of {ctx.get('expected', '').replace(chr(39), '')}"
    elif kind in _FRIENDLY:
        message = _FRIENDLY[kind].format(**{k: _number(v) for k, v in ctx.items()})
    elif kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    else:
        message = err["msg"][0].lower() + err["msg"][1:]
    if kind != "missing" and "input" in err:
        message += f", got {show(err['input'])}"
    return message


def _number(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def show(value: Any) -> str:
    """A value as a user wrote it (YAML flow style), cut to 60 characters."""
    text = repr(value) if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip()
    text = text.removesuffix("\n...").removesuffix(" ...")
    return text if len(text) <= 60 else text[:57] + "..."


def closest(name: str, choices: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The choice `name` most likely meant, or None."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=cutoff)
    return close[0] if close else None


def did_you_mean(name: str, choices: Iterable[str], cutoff: float = 0.6) -> str:
    """` (did you mean 'x'?)`, or an empty string when nothing is close."""
    close = closest(name, choices, cutoff)
    return f" (did you mean {close!r}?)" if close else ""


def unknown_name(kind: str, name: Any, choices: Iterable[str]) -> str:
    """`unknown KIND 'name' (did you mean 'x'?); choose one of: a, b, c`."""
    known = list(choices)
    return f"unknown {kind} {show(name)}{did_you_mean(str(name), known)}; choose one of: {', '.join(known)}"


def option_problems(schema: type[BaseModel], options: dict[str, Any], unknown_key: Callable[[str], str]) -> list[Problem]:
    """Every problem with `options` for `schema`: keys it does not have (`unknown_key(key)` says why, and what
    was meant), then the schema's own validation of the keys it has. Empty when the options are valid."""
    known = set(schema.model_fields)
    problems: list[Problem] = [((key,), unknown_key(key)) for key in options if key not in known]
    try:
        schema(**{k: v for k, v in options.items() if k in known})
    except ValidationError as exc:
        problems.extend((tuple(err["loc"]), describe_error(err)) for err in exc.errors())
    return problems


def non_string_keys(section: str, options: dict[Any, Any]) -> list[str]:
    """`SECTION.KEY: option names must be strings` for each key YAML parsed as another type (`0: x`, `true: x`)."""
    return [f"{section}.{k}: option names must be strings, got {show(k)}" for k in options if not isinstance(k, str)]
