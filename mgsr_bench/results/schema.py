"""Validation of JSON documents against the JSON Schema files shipped with mgsr-bench.

Only the keywords those files use are implemented (``type``, ``const``, ``enum``, ``required``,
``properties``, ``additionalProperties``, ``dependentRequired``, ``items``, ``minItems``, ``maxItems``,
``minimum``, ``maximum``, ``minLength``, ``pattern`` and local ``$ref``); none of the project's dependencies
validates JSON Schema, and one error naming the offending field is what a user needs. The schema
files themselves are standard draft 2020-12, usable by any JSON Schema tool. JSON Schema has no
keyword for finiteness: :func:`non_finite` refuses NaN and infinities (which Python's ``json``
reads and writes) anywhere in a document.
"""

from __future__ import annotations

import json
import math
import re
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

_TYPES: dict[str, tuple[type, ...]] = {"object": (dict,), "array": (list,), "string": (str,), "boolean": (bool,),
                                       "integer": (int,), "number": (int, float), "null": (type(None),)}


@lru_cache(maxsize=None)
def load_schema(name: str) -> dict[str, Any]:
    return json.loads((Path(__file__).with_name(name)).read_text(encoding="utf-8"))


def _is(value: Any, kind: str) -> bool:
    if kind in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES[kind])


def _field(path: str, key: Any) -> str:
    shown = str(key).encode("unicode_escape").decode("ascii")  # a key with a newline stays one line
    return f"{path}.{shown}" if path else shown


def non_finite(value: Any, path: str = "") -> str | None:
    """The first number in ``value`` that is not finite (NaN, an infinity, an integer past a float's
    range), as ``"field 'a.b' must be a finite number, got NaN"``; None when there is none."""
    stack = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, float) and not math.isfinite(item) or \
                isinstance(item, int) and not isinstance(item, bool) and abs(item) > sys.float_info.max:
            shown = "NaN" if item != item else ("Infinity" if item > 0 else "-Infinity") if isinstance(item, float) \
                else "an integer beyond a float's range"
            return f"field '{where}' must be a finite number, got {shown}" if where else \
                f"the record must be a finite number, got {shown}"
        if isinstance(item, dict):
            stack.extend((v, _field(where, k)) for k, v in reversed(list(item.items())))
        elif isinstance(item, list):
            stack.extend((v, f"{where}[{i}]") for i, v in reversed(list(enumerate(item))))
    return None


def schema_error(value: Any, schema: dict[str, Any], root: dict[str, Any] | None = None, path: str = "") -> str | None:
    """The first violation as ``"field 'a.b': problem"``, or None when ``value`` conforms."""
    root = schema if root is None else root
    where = f"field '{path}'" if path else "the record"
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return schema_error(value, target, root, path)
    if "const" in schema and value != schema["const"]:
        return f"{where} must be {json.dumps(schema['const'])}, got {json.dumps(value)}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{where} must be one of {', '.join(map(json.dumps, schema['enum']))}"
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_is(value, k) for k in kinds):
            return f"{where} must be {' or '.join(kinds)}, got {type(value).__name__}"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and "minimum" in schema \
            and value < schema["minimum"]:
        return f"{where} must be >= {schema['minimum']}, got {value}"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and "maximum" in schema \
            and value > schema["maximum"]:
        return f"{where} must be <= {schema['maximum']}, got {value}"
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            return f"{where} must not be empty"
        if "pattern" in schema and not re.search(schema["pattern"], value):
            return f"{where} has the wrong format ({value!r})"
    if isinstance(value, list):
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
            return f"{where} has {len(value)} items"
        if "items" in schema:
            for i, item in enumerate(value):
                error = schema_error(item, schema["items"], root, f"{path}[{i}]")
                if error:
                    return error
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                return f"field '{path + '.' if path else ''}{key}' is missing"
        for key, needed in schema.get("dependentRequired", {}).items():
            for other in needed if key in value else ():
                if other not in value:
                    return f"field '{_field(path, other)}' is missing (a record with '{_field(path, key)}' has it)"
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            sub = _field(path, key)
            if key in props:
                error = schema_error(item, props[key], root, sub)
            elif extra is False:
                error = f"field '{sub}' is not part of the schema"
            elif isinstance(extra, dict):
                error = schema_error(item, extra, root, sub)
            else:
                error = None
            if error:
                return error
    return None
