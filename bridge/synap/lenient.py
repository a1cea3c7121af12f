"""The base of the lenient payload models (bridge/synap/payloads.py): each field read by a function
that never fails, one compiled reader per model.

Why not pydantic, which these models were until issue 16: every field was already read by a
plain Python function (bridge/synap/values.py) that turns what it cannot use into None or an
empty container, so pydantic's core had nothing left to check; it called back into Python once
per field and built the instance, and for the ~140 fields of an exam attempt that was a quarter
of the intake's CPU. Here each model gets one straight-line function, generated from its
annotations when the class is defined (the way ``dataclasses`` writes ``__init__``), that reads
every field in one dict display: no per-field loop, no second pass.

The rules (the same results the pydantic models gave; tests/test_mapping_golden.py holds them):

- a field is declared ``name: Annotated[T, Reader(function)] = default`` (or
  ``= field(factory)`` for a mutable default); keys the model does not declare are ignored;
- a key that is present and not null is ``function(value)``; a missing or null key is the
  default. Every reader maps None to its field's default (checked when the class is defined), so
  "missing" and "null" cannot differ;
- models are immutable (assignment raises) and compare by type and fields; defaults that are
  models are shared, which immutability makes safe.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self, dataclass_transform

#: ``keep_ints`` keeps ints strictly between minus this and this.
_INT_BOUND = 2**63
#: The name the compiled reader sees for ``object.__setattr__`` (models refuse plain assignment).
_SET = object.__setattr__


@dataclass(frozen=True, slots=True)
class Reader:
    """The annotation marker: how a field's value is read from the body's value.

    ``keep`` and ``on_dict`` only save calls on the common path, they change no result: a value
    whose exact type is in ``keep`` is one ``read`` returns unchanged (so it is kept without the
    call), and a dict goes to ``on_dict`` directly when ``read`` would only pass it on to it (a
    nested part's model); the same for ``keep_ints`` and ``keep_ascii``. tests/test_lenient.py
    checks these claims for every payload field.
    """

    read: Callable[[Any], Any]
    keep: tuple[type, ...] = ()
    on_dict: Callable[[dict[str, Any]], Any] | None = None
    #: An int within 64 bits (what Segment's JSON can hold) is kept as it is: the most common
    #: number, so worth its own check.
    keep_ints: bool = False
    #: An ASCII text (the most common text) is kept as it is.
    keep_ascii: bool = False


@dataclass(frozen=True, slots=True)
class _Factory:
    make: Callable[[], Any]


def field(*, default_factory: Callable[[], Any]) -> Any:
    """A default made afresh for each instance (a dict, a list, a model holding one)."""
    return _Factory(default_factory)


@dataclass_transform(kw_only_default=True, frozen_default=True, field_specifiers=(field,))
class Lenient:
    """A lenient model: ``Model.model_validate(mapping)`` never fails (see the module docstring)."""

    #: The declared fields, in order: name -> default.
    model_fields: ClassVar[dict[str, Any]] = {}
    #: How each field is read: name -> its Reader.
    model_readers: ClassVar[dict[str, Reader]] = {}

    @classmethod
    def model_validate(cls, data: Mapping[str, Any]) -> Self:  # noqa: ARG003 (every model's)
        """The model read from ``data`` (replaced by each model's compiled reader)."""
        raise TypeError(f"{cls.__name__} declares no fields")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        hints = typing.get_type_hints(cls, include_extras=True)
        fields = {name: hint for name, hint in hints.items() if not name.startswith("model_")}
        readers = {name: _reader_of(cls, name, hint) for name, hint in fields.items()}
        cls.model_readers = readers
        defaults = {name: _default_of(cls, name) for name in fields}
        cls.model_fields = {
            name: (default.make() if isinstance(default, _Factory) else default)
            for name, default in defaults.items()
        }
        cls.model_validate = _compile(cls, readers, defaults)  # type: ignore[assignment]
        for name, reader in readers.items():
            if reader.read(None) != cls.model_fields[name]:
                raise TypeError(f"{cls.__name__}.{name}: its reader must map None to its default")

    def __init__(self, **values: Any) -> None:
        _SET(self, "__dict__", type(self).model_validate(values).__dict__)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.__dict__ == self.__dict__

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in self.__dict__.items())
        return f"{type(self).__name__}({shown})"


def _reader_of(cls: type, name: str, hint: Any) -> Reader:
    found = [item for item in getattr(hint, "__metadata__", ()) if isinstance(item, Reader)]
    if len(found) != 1 or not name.isidentifier():
        raise TypeError(f"{cls.__name__}.{name} needs exactly one Reader in its annotation")
    return found[0]


def _default_of(cls: type, name: str) -> Any:
    if name not in {key for klass in cls.__mro__ for key in vars(klass)}:
        raise TypeError(f"{cls.__name__}.{name} needs a default")
    return getattr(cls, name)


def _compile(
    cls: type, readers: dict[str, Reader], defaults: dict[str, Any]
) -> classmethod[Any, Any, Any]:
    """The model's reader as one generated function (see the module docstring for why).

    For a model with fields ``a`` (default None) and ``b`` (a factory) it reads::

        def model_validate(cls, data):
            get = data.get
            self = new(cls)
            set(self, "__dict__", {
                'a': r_a(v) if (v := get('a')) is not None else None,
                'b': r_b(v) if (v := get('b')) is not None else f_b(),
            })
            return self
    """
    scope: dict[str, Any] = {"new": object.__new__, "set": _SET, "type": type}
    lines = [
        "def model_validate(cls, data):",
        "    get = data.get",
        "    self = new(cls)",
        "    set(self, '__dict__', {",
    ]
    for name, reader in readers.items():
        default = defaults[name]
        read = _read_expression(name, reader, scope)
        if isinstance(default, _Factory):
            scope[f"f_{name}"] = default.make
            otherwise = f"f_{name}()"
        elif default is None:
            otherwise = "None"
        else:
            scope[f"d_{name}"] = default
            otherwise = f"d_{name}"
        lines.append(
            f"        {name!r}: {read} if (v := get({name!r})) is not None else {otherwise},"
        )
    lines += ["    })", "    return self"]
    exec("\n".join(lines), scope)  # noqa: S102 (our own text: field names are identifiers)
    function = scope["model_validate"]
    function.__qualname__ = f"{cls.__qualname__}.model_validate"
    return classmethod(function)


def _read_expression(name: str, reader: Reader, scope: dict[str, Any]) -> str:
    """The expression that reads a present, non-null ``v`` for field ``name`` (see Reader)."""
    scope[f"r_{name}"] = reader.read
    read = f"r_{name}(v)"
    if reader.on_dict is not None:
        scope[f"o_{name}"] = reader.on_dict
        read = f"(o_{name}(v) if type(v) is dict else {read})"
    if reader.keep_ints:
        read = f"(v if type(v) is int and {-_INT_BOUND} < v < {_INT_BOUND} else {read})"
    if reader.keep_ascii:
        read = f"(v if type(v) is str and v.isascii() else {read})"
    if len(reader.keep) == 1:
        scope[f"k_{name}"] = reader.keep[0]
        read = f"(v if type(v) is k_{name} else {read})"
    elif reader.keep:
        scope[f"k_{name}"] = reader.keep
        read = f"(v if type(v) in k_{name} else {read})"
    return read
