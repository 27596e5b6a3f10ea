"""The generic schema engine: dataclass models in; parsing, JSON and OpenAPI out.

Placed in the flow: `spec` (what the user asks for) and `status` (what the
operator reports) declare their models as dataclasses whose fields carry
their JSON name, description and OpenAPI constraints (`meta`). This module is
the machinery they share, and knows nothing of Dataflows:

- `parse` reads untrusted JSON (a spec) into a model, collecting every
  problem with its path; `unknown_fields` and `prune` say what the API server
  would drop;
- `from_json` reads JSON the operator wrote itself (a status), without
  checks; `to_json` writes any model back (``None`` fields left out, `NULL`
  written as ``null``: a deletion in a merge patch);
- `openapi` turns a model into the CRD's structural schema (`crd` assembles it).

Durations are parsed here, once: a `Duration` field holds the text as
written and its ``seconds``, so no code past `parse` reads a duration string.

>>> import dataclasses
>>> @dataclasses.dataclass
... class Probe:
...     period: Duration = dataclasses.field(
...         default=Duration("10s"), metadata=meta(name="period", doc="How often."))
>>> problems = []
>>> parse(Probe, {"period": "1m30s"}, "spec", problems).period.seconds, problems
(90.0, [])
>>> prop = openapi(Probe)["properties"]["period"]
>>> prop["type"], prop["pattern"] == DURATION_PATTERN, prop["default"]
('string', True, '10s')
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import re
import types
import typing
from typing import Any, Final, Literal, TypeVar, Union

__all__ = [
    "DURATION_PATTERN",
    "NULL",
    "Duration",
    "Null",
    "Problems",
    "duration_seconds",
    "from_json",
    "hints",
    "meta",
    "openapi",
    "parse",
    "prune",
    "to_json",
    "unknown_fields",
]

T = TypeVar("T")
Problems = list[tuple[str, str]]
"""``(path, message)`` for each problem found while parsing."""

DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_OPENAPI_TYPE = {str: "string", int: "integer", float: "number", bool: "boolean"}


def duration_seconds(text: str) -> float:
    """Seconds in a duration such as ``"90s"``, ``"15m"``, ``"1h30m"`` or ``"250ms"``.

    >>> duration_seconds("1h30m"), duration_seconds("250ms"), duration_seconds("2.5s")
    (5400.0, 0.25, 2.5)
    >>> duration_seconds("10")
    Traceback (most recent call last):
    ...
    ValueError: '10' is not a duration: write a number with a unit, e.g. '10s', '15m', '1h'
    """
    if not isinstance(text, str) or not re.fullmatch(DURATION_PATTERN, text):
        msg = f"{text!r} is not a duration: write a number with a unit, e.g. '10s', '15m', '1h'"
        raise ValueError(msg)
    return sum(float(n) * _UNIT[u] for n, u in _DURATION_PART.findall(text))


class Duration(str):
    """A duration as the user wrote it, with its value in ``seconds`` (parsed once).

    It is the text everywhere a string goes (JSON, messages, the CRD's
    defaults), so what the operator writes back is what the user wrote.

    >>> d = Duration("1h30m")
    >>> d, d.seconds, f"every {d}"
    ('1h30m', 5400.0, 'every 1h30m')
    """

    seconds: float

    def __new__(cls, text: str) -> Duration:
        self = super().__new__(cls, text)
        self.seconds = duration_seconds(text)
        return self

    def __getnewargs__(self) -> tuple[str]:
        return (str(self),)


class _Null(enum.Enum):
    NULL = "null"


NULL: Final = _Null.NULL
"""A field set to `NULL` is written as JSON ``null`` (in a merge patch: delete it)."""
Null = Literal[_Null.NULL]
"""The type of `NULL`, for fields a model may need to delete: ``X | Null | None``."""


def meta(
    *,
    name: str,
    doc: str,
    required: bool = False,
    raw: str | None = None,
    extra: dict[str, Any] | None = None,
    **schema: Any,
) -> dict[str, Any]:
    """A model field's metadata: JSON ``name``, ``doc`` and OpenAPI constraints.

    ``raw`` (``"object"`` or ``"array"``) marks a Kubernetes structure passed
    through as is; ``extra`` holds schema keys that are not Python names.

    >>> meta(name="replicas", doc="Pods.", minimum=1)["schema"]
    {'minimum': 1}
    """
    return {"json": name, "doc": doc, "required": required, "raw": raw, "schema": {**schema, **(extra or {})}}


# ------------------------------------------------------------------ types


def _origin(tp: Any) -> tuple[Any, tuple[Any, ...]]:
    return typing.get_origin(tp), typing.get_args(tp)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    """``(inner type, whether None is allowed)``; `Null` is stripped too."""
    origin, args = _origin(tp)
    if origin in (Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None) and a != Null]
        return rest[0], True
    return tp, False


_HINTS: dict[type, dict[str, Any]] = {}


def hints(cls: type) -> dict[str, Any]:
    """Resolved type hints of a model dataclass (cached).

    >>> from headrace_operator.spec import SecretKeyRef
    >>> hints(SecretKeyRef)["name"]
    <class 'str'>
    """
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _fields_by_json(cls: Any) -> dict[str, dataclasses.Field[Any]]:
    return {f.metadata["json"]: f for f in dataclasses.fields(cls)}


def _is_str_type(tp: Any) -> bool:
    """``str`` and its subclasses (`Duration`, string enums)."""
    return isinstance(tp, type) and issubclass(tp, str)


def _type_name(tp: Any) -> str:
    if dataclasses.is_dataclass(tp):
        return "an object"
    origin, _ = _origin(tp)
    if origin is list:
        return "a list"
    if origin is dict or tp is dict:
        return "an object"
    if _is_str_type(tp):
        return "a string"
    return {int: "an integer", float: "a number", bool: "true or false"}.get(tp, str(tp))


# ------------------------------------------------------------------ parsing untrusted JSON


def _convert(tp: Any, value: Any, path: str, problems: Problems) -> Any:
    inner, optional = _strip_optional(tp)
    if value is None:
        if not optional:
            problems.append((path, f"must be {_type_name(inner)}, not null"))
        return None
    if dataclasses.is_dataclass(inner):
        return parse(inner, value, path, problems)  # type: ignore[arg-type]
    origin, args = _origin(inner)
    if origin is list:
        if not isinstance(value, list):
            problems.append((path, f"must be a list; got {value!r}"))
            return []
        return [_convert(args[0], v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            problems.append((path, f"must be an object; got {value!r}"))
            return {}
        if args[1] is Any:
            return value
        return {k: _convert(args[1], v, f"{path}.{k}", problems) for k, v in value.items()}
    if inner is bool:
        if not isinstance(value, bool):
            problems.append((path, f"must be true or false; got {value!r}"))
        return value
    if inner is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append((path, f"must be an integer; got {value!r}"))
        return value
    if inner is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append((path, f"must be a number; got {value!r}"))
            return value
        return float(value)
    if _is_str_type(inner) and not isinstance(value, str):
        problems.append((path, f"must be a string; got {value!r}"))
    elif inner is Duration:
        if re.fullmatch(DURATION_PATTERN, value):
            return Duration(value)
        problems.append((path, f"{value!r} is not a duration: write e.g. '10s', '15m', '1h30m'"))
    return value


def _check_schema(field_meta: dict[str, Any], value: Any, path: str, problems: Problems) -> None:
    s = field_meta["schema"]
    if value is None:
        return
    if "enum" in s and value not in s["enum"]:
        problems.append((path, f"must be one of {', '.join(map(repr, s['enum']))}; got {value!r}"))
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in s and value < s["minimum"]:
            problems.append((path, f"must be >= {s['minimum']}; got {value}"))
        if "maximum" in s and value > s["maximum"]:
            problems.append((path, f"must be <= {s['maximum']}; got {value}"))
    if isinstance(value, str):
        if "minLength" in s and len(value) < s["minLength"]:
            problems.append((path, "must not be empty"))
        if "maxLength" in s and len(value) > s["maxLength"]:
            problems.append((path, f"must be at most {s['maxLength']} characters"))
        if "pattern" in s and not re.search(s["pattern"], value):
            problems.append((path, f"{value!r} does not match {s['pattern']}"))


def _unknown_msg(key: str, fields: dict[str, Any]) -> str:
    close = difflib.get_close_matches(key, list(fields), n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known fields: {', '.join(fields)}"
    return f"unknown field: {hint}"


def parse(cls: type[T], data: Any, path: str, problems: Problems) -> T:
    """Read untrusted JSON into the model ``cls``; append each problem to ``problems``.

    Types, required fields, enums, bounds, lengths, patterns and durations
    are checked; unknown fields are reported with the nearest known name.
    The result is only meaningful when no problem was added.

    >>> from headrace_operator.spec import SecretKeyRef
    >>> problems = []
    >>> parse(SecretKeyRef, {"nmae": "x"}, "spec.ref", problems)
    SecretKeyRef(name='', key='url')
    >>> problems
    [('spec.ref.nmae', "unknown field: did you mean 'name'?"), ('spec.ref.name', 'is required')]
    """
    if not isinstance(data, dict):
        problems.append((path, f"must be an object; got {data!r}"))
        data = {}
    fields = _fields_by_json(cls)
    for key in data:
        if key not in fields:
            problems.append((f"{path}.{key}", _unknown_msg(key, fields)))
    kwargs: dict[str, Any] = {}
    th = hints(cls)
    for jname, f in fields.items():
        fpath = f"{path}.{jname}"
        if jname not in data:
            if f.metadata["required"]:
                problems.append((fpath, "is required"))
            continue
        value = _convert(th[f.name], data[jname], fpath, problems)
        _check_schema(dict(f.metadata), value, fpath, problems)
        kwargs[f.name] = value
    return cls(**kwargs)


def unknown_fields(cls: Any, data: Any, path: str = "spec") -> list[str]:
    """Paths of fields in ``data`` that ``cls`` does not declare (the API server prunes them).

    Raw Kubernetes structures (resources, podTemplate, env, ...) are not looked into.

    >>> from headrace_operator.spec import DataflowSpec
    >>> unknown_fields(DataflowSpec, {"image": "x", "replcas": 3, "flow": {"improt": "a"}})
    ['spec.replcas', 'spec.flow.improt']
    """
    out: list[str] = []
    if not isinstance(data, dict):
        return out
    fields = _fields_by_json(cls)
    th = hints(cls)
    for key, value in data.items():
        f = fields.get(key)
        if f is None:
            out.append(f"{path}.{key}")
            continue
        inner, _ = _strip_optional(th[f.name])
        origin, args = _origin(inner)
        if dataclasses.is_dataclass(inner):
            out += unknown_fields(inner, value, f"{path}.{key}")
        elif origin is list and args and dataclasses.is_dataclass(args[0]) and isinstance(value, list):
            for i, item in enumerate(value):
                out += unknown_fields(args[0], item, f"{path}.{key}[{i}]")
    return out


def prune(cls: Any, data: Any) -> Any:
    """``data`` without the fields ``cls`` does not declare (what the API server keeps).

    >>> from headrace_operator.spec import DataflowSpec
    >>> prune(DataflowSpec, {"image": "x", "replcas": 3, "flow": {"import": "a", "x": 1}})
    {'image': 'x', 'flow': {'import': 'a'}}
    """
    if not isinstance(data, dict):
        return data
    fields = _fields_by_json(cls)
    th = hints(cls)
    out: dict[str, Any] = {}
    for key, value in data.items():
        f = fields.get(key)
        if f is None:
            continue
        inner, _ = _strip_optional(th[f.name])
        origin, args = _origin(inner)
        if dataclasses.is_dataclass(inner):
            out[key] = prune(inner, value)
        elif origin is list and args and dataclasses.is_dataclass(args[0]) and isinstance(value, list):
            out[key] = [prune(args[0], v) for v in value]
        else:
            out[key] = value
    return out


# ------------------------------------------------------------------ the operator's own JSON


def _read(tp: Any, value: Any) -> Any:
    inner, _ = _strip_optional(tp)
    if value is None:
        return None
    if dataclasses.is_dataclass(inner):
        return from_json(inner, value)  # type: ignore[arg-type]
    origin, args = _origin(inner)
    if origin is list:
        return [_read(args[0], v) for v in value]
    if origin is dict:
        return {k: _read(args[1], v) for k, v in value.items()}
    if isinstance(inner, type) and issubclass(inner, enum.Enum):
        return inner(value)
    if inner is Duration:
        return Duration(value)
    return value


def from_json(cls: type[T], data: dict[str, Any]) -> T:
    """Read JSON the operator wrote (a status) into the model ``cls``.

    No checks: the API server validated it against the schema this model
    generates. Absent and ``null`` fields take their defaults; unknown ones
    are ignored.

    >>> from headrace_operator.spec import SecretKeyRef
    >>> from_json(SecretKeyRef, {"name": "redis"})
    SecretKeyRef(name='redis', key='url')
    """
    th = hints(cls)
    kwargs = {
        f.name: _read(th[f.name], data[f.metadata["json"]])
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if data.get(f.metadata["json"]) is not None
    }
    return cls(**kwargs)


def to_json(obj: Any) -> Any:
    """A model back as JSON (``None`` fields left out, `NULL` as ``null``).

    >>> from headrace_operator.spec import SecretKeyRef
    >>> to_json(SecretKeyRef(name="redis"))
    {'name': 'redis', 'key': 'url'}
    """
    if obj is NULL:
        return None
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if value is not None:
                out[f.metadata["json"]] = to_json(value)
        return out
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, str):
        return str(obj)  # a Duration's text
    if isinstance(obj, list):
        return [to_json(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    return obj


# ------------------------------------------------------------------ OpenAPI


def _prop(tp: Any, f: dataclasses.Field[Any] | None, defaults: bool) -> dict[str, Any]:
    inner, _optional = _strip_optional(tp)
    fmeta = dict(f.metadata) if f is not None else {}
    raw = fmeta.get("raw")
    out: dict[str, Any]
    if raw == "object":
        out = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    elif raw == "array":
        out = {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}
    elif dataclasses.is_dataclass(inner):
        out = openapi(inner, defaults)  # type: ignore[arg-type]
    else:
        origin, args = _origin(inner)
        if origin is list:
            out = {"type": "array", "items": _prop(args[0], None, defaults)}
        elif origin is dict:
            out = {"type": "object", "additionalProperties": _prop(args[1], None, defaults)}
        else:
            out = {"type": "string" if _is_str_type(inner) else _OPENAPI_TYPE[inner]}
    if f is None:
        return out
    if fmeta.get("doc"):
        out["description"] = fmeta["doc"]
    if inner is Duration:
        out["pattern"] = DURATION_PATTERN
    out.update(fmeta.get("schema", {}))
    if not defaults or fmeta.get("required"):
        # A status is the operator's to write; a required field has no default by definition.
        return out
    if f.default is not dataclasses.MISSING and f.default is not None:
        out["default"] = to_json(f.default)
    elif f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(inner):
        # An empty object default makes the API server fill in the nested defaults.
        out["default"] = {}
    return out


def openapi(cls: type, defaults: bool = True) -> dict[str, Any]:
    """The structural OpenAPI schema of the model ``cls`` (``defaults``: declare them).

    >>> from headrace_operator.spec import SecretKeyRef
    >>> openapi(SecretKeyRef)["properties"]["key"]
    {'type': 'string', 'description': 'Key in the Secret holding the value.', 'minLength': 1, ...}
    """
    th = hints(cls)
    props: dict[str, Any] = {}
    required: list[str] = []
    for f in dataclasses.fields(cls):
        props[f.metadata["json"]] = _prop(th[f.name], f, defaults)
        if f.metadata.get("required"):
            required.append(f.metadata["json"])
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = required
    doc = (cls.__doc__ or "").strip().splitlines()
    if doc:
        out["description"] = doc[0]
    return out
