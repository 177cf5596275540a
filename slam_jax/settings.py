"""Typed settings: a config section (or a JSON file) becomes a frozen dataclass, checked once, at the job's entry.

A settings class is a frozen dataclass deriving from `Settings`. Its fields' types are checked and converted
(`int`, `float`, `bool`, `str`, `tuple[T, ...]`, or a nested `Settings` class for a sub-section; an int is a
valid float, a list a valid tuple), and a field can
carry limits in its metadata through `setting(...)`: `choices`, `minimum`, `maximum`, `above` (exclusive) and
`exists` (a non-empty value must name an existing path). Every failure is one `ValueError` line naming the key as
the config spells it (`train.learning_rate=-1.0: must be > 0`), so a mistyped value stops a job before it starts,
not an hour into it. Jobs call `Section.from_config(config.section, "section")`; functions below them take the
dataclass and never read a raw config.
"""

import dataclasses
import json
import re
import types
import typing
from typing import Any, Self

from slam_jax.paths import Path


def setting(
    default: Any = dataclasses.MISSING,
    *,
    choices: tuple | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    exists: bool = False,
) -> Any:
    """A dataclass field with limits that `Settings` checks on creation."""
    limits = {"choices": choices, "minimum": minimum, "maximum": maximum, "above": above, "exists": exists or None}
    return dataclasses.field(
        default=default, metadata={key: value for key, value in limits.items() if value is not None}
    )


def _convert(value: Any, kind: Any, key: str) -> Any:
    """`value` as the annotated `kind`, or a one-line error naming `key`."""
    if isinstance(kind, type) and issubclass(kind, Settings):
        if isinstance(value, kind):
            return value
        if hasattr(value, "to_dict"):
            value = value.to_dict()
        if not isinstance(value, typing.Mapping):
            raise ValueError(f"{key}={value!r}: expected a section of keys")
        return kind.from_dict(value, key)
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):  # `X | None`: an optional sub-section or value
        if value is None:
            return None
        (kind,) = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        return _convert(value, kind, key)
    if origin is tuple:
        item_kind = typing.get_args(kind)[0]
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ValueError(f"{key}={value!r}: expected a list of {item_kind.__name__}")
        return tuple(_convert(item, item_kind, f"{key}[{index}]") for index, item in enumerate(value))
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{key}={value!r}: expected true or false")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key}={value!r}: expected an integer")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key}={value!r}: expected a number")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ValueError(f"{key}={value!r}: expected a string")
        return value
    return value


def _check_limits(value: Any, metadata: typing.Mapping, key: str) -> None:
    choices = metadata.get("choices")
    if choices and value not in choices:
        raise ValueError(f"{key}={value!r}: not one of {list(choices)}")
    if "minimum" in metadata and value < metadata["minimum"]:
        raise ValueError(f"{key}={value!r}: must be >= {metadata['minimum']}")
    if "maximum" in metadata and value > metadata["maximum"]:
        raise ValueError(f"{key}={value!r}: must be <= {metadata['maximum']}")
    if "above" in metadata and not value > metadata["above"]:
        raise ValueError(f"{key}={value!r}: must be > {metadata['above']}")
    if metadata.get("exists") and value and not Path(value).exists():
        raise FileNotFoundError(f"{key}={value!r}: no such file or folder")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Base of every settings class: typed, range-checked on creation, to and from dicts and JSON files."""

    def __post_init__(self) -> None:
        name = getattr(self, "_source", type(self).__name__)
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            key = f"{name}.{field.name}"
            value = _convert(getattr(self, field.name), hints[field.name], key)
            _check_limits(value, field.metadata, key)
            object.__setattr__(self, field.name, value)
        object.__setattr__(self, "_source", name)
        self.validate()

    def validate(self) -> None:
        """Checks across fields; a subclass raises `ValueError` naming the keys."""

    def replace(self, **changes) -> Self:
        return _construct(type(self), {**self.to_dict(), **changes}, self._source)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: typing.Mapping, source: str | None = None) -> Self:
        """The settings in `values`; `source` (a config section name or file) prefixes every error."""
        source = source or cls.__name__
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"{source}: unknown keys {unknown} (known: {sorted(names)})")
        missing = [
            field.name
            for field in dataclasses.fields(cls)
            if field.name not in values
            and field.default is dataclasses.MISSING
            and field.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise ValueError(f"{source}: missing keys {missing}")
        return _construct(cls, dict(values), source)

    @classmethod
    def from_config(cls, section: Any, name: str) -> Self:
        """The settings of the config section `name` (a ConfigDict or a mapping)."""
        if section is None:
            raise ValueError(f"config.{name}: missing section")
        values = section.to_dict() if hasattr(section, "to_dict") else dict(section)
        return cls.from_dict(values, name)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Self:
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: not found") from None
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a JSON object")
        return cls.from_dict(values, source=str(path))


def _construct(cls: type, values: dict, source: str):
    """`cls(**values)` with `source` as the error prefix of its checks."""
    instance = cls.__new__(cls)
    object.__setattr__(instance, "_source", source)
    try:
        cls.__init__(instance, **values)
    except TypeError as error:
        raise ValueError(f"{source}: {error}") from None
    return instance


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms])")
_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str, key: str = "train.time_budget") -> float:
    """Seconds in '23h30m', '90m', '1d2h', '45s' or a plain number of seconds; '' -> 0."""
    text = str(text).strip().lower()
    if not text:
        return 0.0
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = _DURATION.findall(text)
    if not parts or _DURATION.sub("", text).strip():
        raise ValueError(f"{key}={text!r}: use e.g. '23h30m', '90m' or seconds")
    return sum(float(value) * _SECONDS[unit] for value, unit in parts)
