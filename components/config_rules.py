"""The value rules of the configuration and the machinery that reads it (used by :mod:`config`).

A field's annotation says which values it accepts: ``Literal[...]`` for a fixed set of words,
``Annotated[<type>, Range(...)]`` for numeric bounds. :func:`check_values` (run whenever a Config is
built) enforces both, so a bad value fails at load, before any step runs, naming the key and what
it accepts. ``key=value`` overrides are parsed by the field's type (:func:`_coerce`).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal


@dataclass(frozen=True)
class Range:
    """Inclusive numeric bounds (``None`` = unbounded); ``lo_open`` makes the lower bound exclusive."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False

    def accepts(self, value: float) -> bool:
        if value != value:  # NaN
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return self.hi is None or value <= self.hi

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}]"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        return f"<= {self.hi:g}"


#: a share or probability
Fraction = Annotated[float, Range(0.0, 1.0)]
#: a count or size that must be at least 1
PositiveInt = Annotated[int, Range(1)]
#: a count or size where 0 means "none" / "default" / "no limit"
NonNegativeInt = Annotated[int, Range(0)]
NonNegativeFloat = Annotated[float, Range(0.0)]
#: a learning rate, a duration factor: strictly above 0
PositiveFloat = Annotated[float, Range(0.0, lo_open=True)]
#: the three-way switches of training speed-ups
Switch = Literal["auto", "on", "off"]


def split_override(text: str) -> tuple[str, str]:
    """``"train.stage1_epochs=1"`` -> ``("train.stage1_epochs", "1")``."""
    if "=" not in text:
        raise ValueError(f"override {text!r} is not of the form key=value (e.g. train.stage1_epochs=1)")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def build_section(cls: type, data: dict[str, Any], prefix: str) -> Any:
    """The dataclass ``cls`` from a mapping, nested sections included; unknown keys are refused."""
    if not isinstance(data, dict):
        raise ValueError(f"config section {prefix or '<root>'!r} must be a mapping, got {data!r}")
    hints = _field_types(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown config key(s) {sorted(prefix + k for k in unknown)}; known: {sorted(known)}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build_section(tp, value, prefix + name + ".")
        else:
            kwargs[name] = _coerce(value, tp, prefix + name)
    return cls(**kwargs)


def check_values(section: Any, prefix: str = "") -> None:
    """Raise ValueError, naming the key and what it accepts, for a value outside its field's rule."""
    hints = typing.get_type_hints(type(section), include_extras=True)
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            check_values(value, prefix + f.name + ".")
        else:
            _check_value(value, hints[f.name], prefix + f.name)


def _check_value(value: Any, tp: Any, key: str) -> None:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *rules = typing.get_args(tp)
        _check_value(value, base, key)
        for rule in rules:
            if isinstance(rule, Range) and isinstance(value, (int, float)) and not rule.accepts(value):
                raise ValueError(f"config key {key!r} must be {rule.describe()}, got {value!r}")
    elif origin is list:
        (item_tp,) = typing.get_args(tp)
        for item in value:
            _check_value(item, item_tp, key)
    elif origin is Literal and value not in typing.get_args(tp):
        allowed = ", ".join(map(str, typing.get_args(tp)))
        raise ValueError(f"config key {key!r} must be one of: {allowed}; got {value!r}")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Literal:  # the allowed words are checked by check_values
        if isinstance(value, bool) and "on" in typing.get_args(tp):
            return "on" if value else "off"  # YAML 1.1 reads on/off as booleans
        return str(value) if all(isinstance(a, str) for a in typing.get_args(tp)) else value
    try:
        if origin is list:
            (item_tp,) = typing.get_args(tp)
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            return [_coerce(v, item_tp, key) for v in value]
        if tp is bool:
            if isinstance(value, str):
                if value.lower() in {"1", "true", "yes", "on"}:
                    return True
                if value.lower() in {"0", "false", "no", "off"}:
                    return False
                raise ValueError(value)
            return bool(value)
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if tp is float:
            return float(value)
        if tp is str:
            return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"config key {key!r}: cannot read {value!r} as {getattr(tp, '__name__', tp)}") from None
    return value


def set_override(data: dict[str, Any], key: str, raw: Any, cls: type) -> None:
    """Set the dotted ``key`` of the config mapping ``data`` (of dataclass ``cls``) to ``raw``, read by its type."""
    parts = key.split(".")
    node, node_cls = data, cls
    for part in parts[:-1]:
        hints = _field_types(node_cls)
        if part not in node or not dataclasses.is_dataclass(hints.get(part)):
            raise ValueError(f"unknown config section {part!r} in override {key!r}")
        node, node_cls = node[part], hints[part]
    leaf = parts[-1]
    hints = _field_types(node_cls)
    if leaf not in hints:
        raise ValueError(f"unknown config key {key!r}; known in this section: {sorted(hints)}")
    node[leaf] = _coerce(raw, hints[leaf], key)
