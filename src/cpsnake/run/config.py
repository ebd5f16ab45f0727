"""The workflow's config, checked when the Snakefile is parsed: one line for the first problem, never a schema dump.

:func:`check` validates the config (a mapping, as Snakemake loaded it) against
``workflow/schemas/config.schema.yaml`` with jsonschema and fills in the schema's defaults exactly as
``snakemake.utils.validate(config, schema)`` does (``set_default``: each property's ``default`` is set before
its mapping is checked, so a nested default such as ``batch: {}`` gets its own keys' defaults). The first
problem, shallowest key first, is a :class:`~cpsnake.errors.CpsnakeError` of one line naming the key, what
was found, what was expected and the fix, e.g.
``config batch.images: found 0; expected a whole number >= 1; ...``; an unknown key names the closest
known one (``config key 'diamter': found an unknown key; ...; did you mean 'diameter'? ...``).

:func:`results_folder` checks config ``results``: a folder that resolves to the working folder or one above
it (``/``, ``.``, ``./``, ``..``) is refused, since the run's outputs (masks/, work/, logs/, the run tables)
would mix with the working folder's own files, which a glob of images could then pick up as new images.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Sequence
from typing import Any

from cpsnake.errors import CpsnakeError

__all__ = ["check", "key_name", "results_folder"]

WHERE = "the config file (config.yaml, --configfile) or --config"
# string patterns of the schema, in words (others are quoted as regular expressions)
PATTERNS = {
    "^auto$": '"auto"',
    "^ *[0-9]+( *, *[0-9]+){0,2} *$": 'a text of 1 to 3 channel numbers such as "0,2"',
}


def check(config: dict, schema_path: str | os.PathLike) -> dict:
    """Fill in the defaults of the schema at ``schema_path`` (YAML) into ``config`` in place and check it.

    Returns ``config``. The first problem (shallowest key, then by name) is a one-line CpsnakeError.
    """
    import yaml
    from jsonschema import Draft202012Validator, validators

    with open(schema_path, encoding="utf-8") as fh:
        schema = yaml.safe_load(fh)
    properties = Draft202012Validator.VALIDATORS["properties"]

    def set_defaults(validator, props, instance, subschema):  # as snakemake.utils.validate(set_default=True)
        for name, sub in props.items():
            if "default" in sub and isinstance(instance, dict):
                instance.setdefault(name, sub["default"])
        yield from properties(validator, props, instance, subschema)

    validator = validators.extend(Draft202012Validator, {"properties": set_defaults})(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), key_name(e.absolute_path)))
    if errors:
        raise CpsnakeError(_message(errors[0]))
    return config


def key_name(path: Sequence[Any]) -> str:
    """``batch.images`` or ``normalize.percentiles[1]`` for a jsonschema path ``['batch', 'images']``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _message(error) -> str:
    path = list(error.absolute_path)
    if error.validator == "additionalProperties":
        known = list(error.schema.get("properties", {}))
        unknown = min(str(k) for k in error.instance if k not in known)
        full = key_name(path + [unknown])
        close = difflib.get_close_matches(unknown, known, n=1)
        if close:
            hint = f"did you mean {key_name(path + close)!r}? rename it"
        else:
            hint = f"the known keys are {', '.join(key_name(path + [k]) for k in known)}; rename or remove it"
        return f"config key {full!r}: found an unknown key; expected a key of the workflow's config; {hint} in {WHERE}"
    key = key_name(path) or "(the whole config)"
    return f"config {key}: found {_shown(error.instance)}; expected {_expected(error.schema)}; fix {key} in {WHERE}"


def _shown(value: Any, width: int = 60) -> str:
    """The value as YAML / JSON text (``"high"``, ``0``, ``null``, ``[1, 2]``), cut to ``width`` characters."""
    text = json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


def _bounds(schema: dict) -> str:
    """`` from 0 to 100``, `` >= 1``, `` > 0 and <= 1`` or nothing, from a schema's bounds."""
    if "minimum" in schema and "maximum" in schema:
        return f" from {schema['minimum']} to {schema['maximum']}"
    low = (
        f">= {schema['minimum']}"
        if "minimum" in schema
        else f"> {schema['exclusiveMinimum']}"
        if "exclusiveMinimum" in schema
        else ""
    )
    high = (
        f"<= {schema['maximum']}"
        if "maximum" in schema
        else f"< {schema['exclusiveMaximum']}"
        if "exclusiveMaximum" in schema
        else ""
    )
    both = " and ".join(b for b in (low, high) if b)
    return f" {both}" if both else ""


def _expected(schema: dict) -> str:
    """What a schema allows, in words: ``a number > 0, "auto" or null``."""
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else list(types)
    parts = []
    for t in types:
        if t in ("integer", "number"):
            parts.append(("a whole number" if t == "integer" else "a number") + _bounds(schema))
        elif t == "string":
            pattern = schema.get("pattern")
            if pattern:
                parts.append(PATTERNS.get(pattern, f"a text matching {pattern}"))
            else:
                parts.append("a text" + (" (not empty)" if schema.get("minLength") else ""))
        elif t == "boolean":
            parts.append("true or false")
        elif t == "null":
            parts.append("null")
        elif t == "array":
            low, high = schema.get("minItems"), schema.get("maxItems")
            count = (
                f"{low}" if low == high and low is not None else f"{low or 0} to {high}" if high else "any number of"
            )
            parts.append(f"a list of {count} items ({_expected(schema.get('items', {}))} each)")
        elif t == "object":
            parts.append(f"a mapping of {', '.join(schema.get('properties', {}))} (e.g. {{key: value}})")
    if not parts:
        return "a value the schema allows"
    return " or ".join(parts)


def results_folder(value: str, *, workdir: str | os.PathLike = ".") -> str:
    """Config ``results`` without trailing separators (``out/`` -> ``out``), or a one-line CpsnakeError when
    it resolves (links followed) to the working folder ``workdir`` or a folder above it (``/``, ``.``, ``..``).
    """
    here = os.path.realpath(workdir)
    real = os.path.realpath(os.path.join(here, value))
    if here == real or here.startswith(real.rstrip(os.sep) + os.sep):
        what = "the working folder" if here == real else "a folder above the working folder"
        raise CpsnakeError(
            f"config results={value!r}: found {real}, {what} {here}; expected a folder of its own for the run's "
            f"outputs (masks/, work/, logs/, ...); set results to a new folder such as results or /data/run1 in {WHERE}"
        )
    return value.rstrip(os.sep)
