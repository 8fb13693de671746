"""Config stage, errors: ScenarioError, the strict base model of every section, and one-line messages."""

from __future__ import annotations

import difflib
import math
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class ScenarioError(ValueError):
    """A scenario that cannot be simulated; the message is one line naming field and fix."""


class StrictModel(BaseModel):
    """Base of every config section and hardware profile: unknown keys refused, frozen, finite figures."""

    # allow_inf_nan=False: a NaN or infinite figure would flow silently into every time and byte
    # (an infinite bandwidth or NaN peak would make every op time 0 or NaN).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def divisors(n: int) -> list[int]:
    """Divisors of n, for error messages; O(sqrt n), and only the small ones of an absurd n."""
    small = [d for d in range(1, min(math.isqrt(n), 10**6) + 1) if n % d == 0]
    if n > 10**12:
        return small
    return sorted(set(small) | {n // d for d in small})


class LayoutError(ValueError):
    """A broken layout rule; `path` names the field (e.g. parallel.tp) the message is about."""

    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = path


#: Most characters of an input value (or key) quoted in an error message.
EXCERPT_CHARS = 60


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """repr(value), cut to `limit` characters: an error names a value, it never prints a big one.
    Containers are cut before their repr is built (a shared YAML alias can make it huge)."""
    text = _short_repr(value, limit + 1)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short_repr(value: Any, budget: int) -> str:
    if isinstance(value, (list, tuple)):
        parts, used = [], 0
        for item in value:
            if used > budget:
                parts.append("...")
                break
            part = _short_repr(item, budget - used)
            parts.append(part)
            used += len(part) + 2
        text = ", ".join(parts)
        return f"[{text}]" if isinstance(value, list) else f"({text})"
    if isinstance(value, dict):
        parts, used = [], 0
        for key, item in value.items():
            if used > budget:
                parts.append("...")
                break
            part = f"{_short_repr(key, budget - used)}: {_short_repr(item, budget - used)}"
            parts.append(part)
            used += len(part) + 2
        return "{" + ", ".join(parts) + "}"
    if isinstance(value, str) and len(value) > budget:
        value = value[:budget]
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4 * budget:
        return f"<{value.bit_length()}-bit integer>"
    return repr(value)


def _format_loc(loc: tuple) -> str:
    return ".".join(
        excerpt(part, 40)[1:-1] if isinstance(part, str) and (not part.isprintable() or len(part) > 40) else str(part)
        for part in loc
    )


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models an annotation may hold (a model, or the members of an Optional or a union of them)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _models_in(arg)]


def _tag_of(model: type[BaseModel]) -> Any:
    """A tagged union member's tag: the default of its `kind` field (None when it has none)."""
    field = model.model_fields.get("kind")
    return field.default if field is not None else None


def _walk(model_cls: type[BaseModel], loc: tuple) -> tuple[tuple, list[type[BaseModel]]]:
    """`loc` without the tags pydantic inserts for a tagged union's member (`arrivals.poisson.rate_per_s`
    is `arrivals.rate_per_s` in the YAML), and the models that may sit at its end."""
    models: list[type[BaseModel]] = [model_cls]
    path: list = []
    for part in loc:
        tagged = [m for m in models if len(models) > 1 and _tag_of(m) == part]
        if tagged:
            models = tagged
            continue
        path.append(part)
        if isinstance(part, int):
            continue
        field = next((m.model_fields[part] for m in models if part in m.model_fields), None)
        models = _models_in(field.annotation) if field is not None else []
    return tuple(path), models


def _valid_keys(model_cls: type[BaseModel], loc: tuple) -> list[str]:
    """Field names valid at the parent of `loc` (walks nested pydantic models)."""
    models = _walk(model_cls, loc[:-1])[1]
    return list(models[0].model_fields) if len(models) == 1 else []


def one_line_error(exc: ValidationError, model_cls: type[BaseModel]) -> str:
    """One line for a validation error of `model_cls`: the field path, what is wrong and the fix."""
    errors = exc.errors()
    # A misspelt key shows up both as unknown and as a missing required field: name the typo.
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc, msg, kind = err["loc"], err["msg"], err["type"]
    path = _format_loc(_walk(model_cls, loc)[0])
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, LayoutError):
        return f"{cause.path}: {cause}"
    if kind == "extra_forbidden":
        options = _valid_keys(model_cls, loc)
        close = difflib.get_close_matches(str(loc[-1])[:100], options, n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(options)}"
        return f"{path}: unknown key; {hint}"
    if kind == "missing":
        return f"{path}: required field is missing; add it"
    if kind == "literal_error" and loc and loc[-1] == "[key]":  # a mapping key outside a fixed set
        options = re.findall(r"'([^']*)'", str((err.get("ctx") or {}).get("expected", "")))
        close = difflib.get_close_matches(str(err.get("input"))[:100], options, n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(options)}"
        return f"{_format_loc(loc[:-1])}: unknown key; {hint}"
    if kind in ("greater_than", "greater_than_equal") and "input" in err:
        return f"{path} = {excerpt(err['input'])}: {msg.lower()}"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if len(msg) > 400:  # a message that quotes the input (pydantic's, or a validator's f-string)
        msg = msg[:397] + "..."
    got = (
        f" (got {excerpt(err['input'])})"
        if "input" in err and not isinstance(err["input"], dict) and kind != "value_error"
        else ""
    )
    prefix = f"{path}: " if path else ""
    return f"{prefix}{msg}{got}"
