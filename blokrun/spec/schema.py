"""A small JSON-schema subset for ``await-input``: what the input of a suspended step must be.

Supported: ``type`` (string, number, integer, boolean, object, array, null, or a list of
them), ``properties``, ``required``, ``additionalProperties`` (false), ``items``, ``enum``,
``minLength``/``maxLength``, ``minimum``/``maximum``. Anything else in a schema is a load
error, so a schema never silently checks less than it seems to.
"""

from __future__ import annotations

from typing import Any

__all__ = ["check_schema", "validate"]

_TYPES = {
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
    "null": (type(None),),
}
_KEYS = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "enum",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "description",
        "title",
    }
)


def check_schema(schema: Any, path: str = "$") -> list[str]:
    """Problems with a schema itself (empty list when it is usable)."""
    if not isinstance(schema, dict):
        return [f"{path}: expected an object"]
    problems = [f"{path}.{k}: unsupported schema keyword" for k in schema if k not in _KEYS]
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
    problems += [f"{path}.type: unknown type {k!r}" for k in kinds if k not in _TYPES]
    props = schema.get("properties", {})
    if not isinstance(props, dict):
        problems.append(f"{path}.properties: expected an object")
    else:
        for name, sub in props.items():
            problems += check_schema(sub, f"{path}.properties.{name}")
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        problems.append(f"{path}.required: expected a list of names")
    if "items" in schema:
        problems += check_schema(schema["items"], f"{path}.items")
    return problems


def validate(value: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """Why ``value`` does not match ``schema`` (empty list when it does)."""
    wrong_type = _wrong_type(value, schema, path)
    if wrong_type:
        return [wrong_type]
    errors: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: expected one of {schema['enum']!r}")
    if isinstance(value, str):
        errors += _string(value, schema, path)
    if isinstance(value, int | float) and not isinstance(value, bool):
        errors += _number(value, schema, path)
    if isinstance(value, dict):
        errors += _object(value, schema, path)
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += validate(item, schema["items"], f"{path}[{i}]")
    return errors


def _wrong_type(value: Any, schema: dict[str, Any], path: str) -> str | None:
    kind = schema.get("type")
    if kind is None:
        return None
    kinds = kind if isinstance(kind, list) else [kind]
    ok = any(
        isinstance(value, _TYPES[k])
        and not (k in ("number", "integer") and isinstance(value, bool))
        for k in kinds
    )
    return None if ok else f"{path}: expected {' or '.join(kinds)}, got {type(value).__name__}"


def _string(value: str, schema: dict[str, Any], path: str) -> list[str]:
    errors = []
    if len(value) < schema.get("minLength", 0):
        errors.append(f"{path}: shorter than {schema['minLength']} characters")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        errors.append(f"{path}: longer than {schema['maxLength']} characters")
    return errors


def _number(value: float, schema: dict[str, Any], path: str) -> list[str]:
    errors = []
    if "minimum" in schema and value < schema["minimum"]:
        errors.append(f"{path}: less than {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        errors.append(f"{path}: more than {schema['maximum']}")
    return errors


def _object(value: dict[str, Any], schema: dict[str, Any], path: str) -> list[str]:
    props = schema.get("properties", {})
    errors = [f"{path}.{name}: missing" for name in schema.get("required", []) if name not in value]
    for name, item in value.items():
        if name in props:
            errors += validate(item, props[name], f"{path}.{name}")
        elif schema.get("additionalProperties") is False:
            errors.append(f"{path}.{name}: not allowed")
    return errors
