"""Typed JSON documents: one parse-and-validate path for every file qexport writes and reads back.

Manifests, bench results and the build details a family hands back are dataclasses. They become
JSON through :func:`to_json` and come back through :func:`parse`, which checks every field
against its annotation and names the first one that is wrong in one sentence -- a malformed or
hand-edited file is never half-understood, and no reader looks anything up by string key. A key
the type does not declare is refused too: a mistyped optional field would otherwise be lost
without a word. A field that older files wrote under another name declares it with
:func:`renamed`, so those files stay readable.

Torch-free and dependency-free: `verify` of an ONNX artifact runs where only onnxruntime is.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any, TypeVar, Union

from qexport.core.errors import QExportError

T = TypeVar("T")
FORMERLY = "qexport.core.documents.formerly"  # dataclass field metadata: the names older documents used


class TextEnum(str, enum.Enum):
    """A closed set of names (a status, a precision, a verdict) written to JSON as its text:
    compared, printed and formatted as that text on every Python version, and read back by
    :func:`parse` only when it is one of the members."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class DocumentError(QExportError):
    """A document does not have the shape its type declares."""


def parse(cls: type[T], data: Any, where: str) -> T:
    """``data`` (parsed JSON) as an instance of the dataclass ``cls``, or one sentence naming the
    first field that is missing or of the wrong type (``where`` names the file, for the user)."""
    return _convert(cls, data, where, "")


def renamed(*formerly: str, **field_options: Any) -> Any:
    """A dataclass field that older documents wrote as ``formerly``: ``parse`` reads those names
    as this field, so a rename never makes an old file unreadable. ``field_options`` go to
    ``dataclasses.field`` (``default=...``)."""
    return dataclasses.field(metadata={FORMERLY: formerly}, **field_options)


def to_json(document: Any) -> Any:
    """A dataclass (nested, in lists and dicts) as plain JSON values; ``None`` fields are kept so
    a reader sees every field the type declares."""
    if dataclasses.is_dataclass(document) and not isinstance(document, type):
        return {f.name: to_json(getattr(document, f.name)) for f in dataclasses.fields(document)}
    if isinstance(document, enum.Enum):
        return document.value
    if isinstance(document, dict):
        return {str(key): to_json(value) for key, value in document.items()}
    if isinstance(document, (list, tuple)):
        return [to_json(value) for value in document]
    return document


def _fail(where: str, path: str, expected: str, value: Any) -> DocumentError:
    shown = repr(value) if len(repr(value)) <= 40 else type(value).__name__
    field = f"field {path!r}" if path else "the document"
    return DocumentError(f"{where}: {field} should be {expected}, not {shown}; the file is damaged or was not "
                         "written by this qexport -- rewrite it with the command that made it.")


def _convert(annotation: Any, value: Any, where: str, path: str) -> Any:  # noqa: C901 - one case per kind
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _convert(option, value, where, path)
            except DocumentError as err:
                errors.append(err)
        raise errors[0]
    if dataclasses.is_dataclass(annotation):
        return _dataclass(annotation, value, where, path)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return _member(annotation, value, where, path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _fail(where, path, "a list", value)
        item = args[0] if args else Any
        converted = [_convert(item, v, where, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(converted) if origin is tuple else converted
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise _fail(where, path, "an object", value)
        keyed_by, item = args if len(args) == 2 else (str, Any)
        return {_key(keyed_by, key, where, f"{path}.{key}"): _convert(item, v, where, f"{path}.{key}")
                for key, v in value.items()}
    if annotation is list:
        if not isinstance(value, list):
            raise _fail(where, path, "a list", value)
        return value
    return _scalar(annotation, value, where, path)


def _key(keyed_by: Any, key: str, where: str, path: str) -> Any:
    """A JSON object's key as the mapping's declared key type. JSON keys are always text, and the
    documents qexport writes key their batch sizes by that text (``dict[str, ...]`` keyed by
    ``str(batch_size)``: ``"32"`` is written and read back as ``"32"``). A mapping declared
    ``dict[int, ...]`` -- no qexport document declares one -- has its keys read back as whole
    numbers here (``"32"`` as ``32``) and refused when they are not, so no reader converts keys itself."""
    if keyed_by is int:
        if not (key.isascii() and key.isdigit()):
            raise DocumentError(f"{where}: key {path!r} should be a whole number; the file is damaged or was not "
                                "written by this qexport -- rewrite it with the command that made it.")
        return int(key)
    if keyed_by not in (str, Any):
        raise TypeError(f"documents cannot parse mappings keyed by {keyed_by!r} (at {path})")  # a programming error
    return key


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# scalar type -> (what the user is told it should be, does a JSON value qualify)
SCALARS: dict[Any, tuple[str, Any]] = {
    bool: ("true or false", lambda v: isinstance(v, bool)),
    float: ("a number", _is_number),
    int: ("a whole number", lambda v: _is_number(v) and isinstance(v, int)),
    str: ("text", lambda v: isinstance(v, str)),
    type(None): ("null", lambda v: v is None),
}


def _scalar(annotation: Any, value: Any, where: str, path: str) -> Any:
    if annotation not in SCALARS:
        raise TypeError(f"documents cannot parse {annotation!r} (at {path or 'top level'})")  # a programming error
    expected, qualifies = SCALARS[annotation]
    if not qualifies(value):
        raise _fail(where, path, expected, value)
    return float(value) if annotation is float else value


def _member(cls: type[enum.Enum], value: Any, where: str, path: str) -> Any:
    """The member of ``cls`` whose value ``value`` is, or one sentence listing the accepted values."""
    try:
        return cls(value)
    except ValueError:
        raise _fail(where, path, "one of " + ", ".join(repr(m.value) for m in cls), value) from None


def _dataclass(cls: type, value: Any, where: str, path: str) -> Any:
    if not isinstance(value, dict):
        raise _fail(where, path, "an object", value)
    hints = typing.get_type_hints(cls)
    value = _under_current_names(cls, value, where, path)
    given = {}
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        inner = _inner(path, field.name)
        if field.name in value:
            given[field.name] = _convert(hints[field.name], value[field.name], where, inner)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise DocumentError(f"{where} lacks the required field {inner!r}; the file is truncated or was not "
                                "written by this qexport -- rewrite it with the command that made it.")
    return cls(**given)


def _inner(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _under_current_names(cls: type, value: dict, where: str, path: str) -> dict:
    """``value`` with the names older documents used (see :func:`renamed`) read as today's; a key
    ``cls`` does not declare, under any name, is one sentence naming it and the document."""
    fields = {field.name: field for field in dataclasses.fields(cls)}
    current_name = {old: field.name for field in fields.values() for old in field.metadata.get(FORMERLY, ())}
    current: dict = {}
    for key, item in value.items():
        name = current_name.get(key, key)
        if name not in fields:
            raise DocumentError(f"{where}: field {_inner(path, str(key))!r} is not one this qexport knows (a typo, or a "
                                "file from a newer qexport) -- correct or remove it, or rewrite the file with the "
                                "command that made it.")
        if name in current:
            raise DocumentError(f"{where} gives field {_inner(path, name)!r} twice, under its name and a former one "
                                "-- keep one.")
        current[name] = item
    return current
