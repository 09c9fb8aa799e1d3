"""Typed settings: one frozen dataclass per config section, the only place defaults live.

A stage's settings class (``pastflow.<stage>.settings``) names its fields after the config
keys and gives each its default, range and one-line meaning with :func:`setting`. The
workflow config only overrides; :meth:`Settings.from_config` checks a section (unknown keys,
types, ranges) and raises :class:`~pastflow.errors.InputError` naming the key, so a typo
stops the run before any job. The JSON schema (``workflow/schemas/config.schema.yaml``) is
written from these classes (:func:`json_schema`), and a test keeps it and
``config/README.md`` equal to them.

Supported field types: ``bool``, ``int``, ``float``, ``str``, ``X | None``, ``list[X]``,
``dict[str, X]`` (``dict[str, Any]`` is free-form), unions such as ``int | dict[str, int]``,
and nested :class:`Settings` classes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import types
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml

from pastflow.errors import InputError

_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string",
               type(None): "null"}


def setting(default: Any, help: str, *, minimum: float | None = None,
            exclusive_minimum: float | None = None, maximum: float | None = None,
            choices: tuple | None = None) -> Any:
    """A settings field: its default (the only one), meaning and allowed range.

    Mutable defaults (lists, dicts, nested settings) are copied per instance.
    """
    metadata = {"help": help, "minimum": minimum, "exclusive_minimum": exclusive_minimum,
                "maximum": maximum, "choices": choices}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        frozen = json.dumps(_plain(default))
        return dataclasses.field(default_factory=lambda: _thaw(default, frozen),
                                 metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _thaw(default, frozen: str):
    if dataclasses.is_dataclass(default):
        return dataclasses.replace(default)
    return json.loads(frozen)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Base of every settings class. Subclasses are frozen dataclasses of :func:`setting`
    fields; override :meth:`check` for rules that span several fields."""

    @classmethod
    def from_config(cls, section: Mapping | None = None, where: str = "",
                    source: str | Path | None = "config"):
        """Check ``section`` (a mapping of config keys to values; None = all defaults) and
        return the settings with every other field at its default.

        ``where`` is the section's dotted key (``"qc"``), used in error messages; ``source``
        names the file (or ``config``).

        Raises:
            InputError: an unknown key (likely misspelt), a value of the wrong type or out
                of range, naming ``where.key``.
        """
        if section is None:
            section = {}
        if not isinstance(section, Mapping):
            raise InputError(source, f"config key '{where or '(top level)'}' must be a "
                                     f"mapping of keys to values, got {section!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        unknown = [k for k in section if k not in fields]
        if unknown:
            raise InputError(source, f"unknown config key '{_join(where, unknown[0])}' "
                                     f"(known keys: {', '.join(fields)})")
        values = {}
        for name, value in section.items():
            key = _join(where, name)
            if _is_settings(hints[name]) and isinstance(value, Mapping):
                # A partial nested section overrides this field's own default.
                value = {**_field_default(fields[name]).to_dict(), **value}
            values[name] = _coerce(value, hints[name], key, source)
            _check_range(values[name], fields[name].metadata, key, source)
        settings = cls(**values)
        settings.check(_Failer(where, source))
        return settings

    def check(self, fail: "_Failer") -> None:
        """Cross-field checks; call ``fail(key, problem)`` to refuse."""

    def to_dict(self) -> dict:
        """Every field as plain JSON-compatible values (nested settings as dicts)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def defaults(cls) -> dict:
        return cls().to_dict()


class _Failer:
    """``fail(key, problem)`` raises the InputError of a cross-field check."""

    def __init__(self, where: str, source):
        self.where, self.source = where, source

    def __call__(self, key: str, problem: str):
        raise InputError(self.source, f"config key '{_join(self.where, key)}': {problem}")


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _plain(value):
    if isinstance(value, Settings):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _is_settings(tp) -> bool:
    return isinstance(tp, type) and issubclass(tp, Settings)


def _describe(tp) -> str:
    if _is_settings(tp):
        return "a mapping"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if tp is Any:
        return "any value"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            type(None): "null"}[tp]


def _coerce(value, tp, key: str, source):
    """``value`` checked against the annotation ``tp`` (ints are accepted for floats)."""
    def wrong():
        return InputError(source, f"config key '{key}': expected {_describe(tp)}, "
                                  f"got {value!r}")

    if tp is Any:
        return value
    if _is_settings(tp):
        return tp.from_config(value, key, source)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key, source)
            except InputError:
                continue
        raise wrong()
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise wrong()
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise wrong()
        _, item = typing.get_args(tp)
        return {str(k): _coerce(v, item, f"{key}.{k}", source) for k, v in value.items()}
    if tp is type(None):
        if value is not None:
            raise wrong()
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise wrong()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong()
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong()
        if value != value or value in (float("inf"), float("-inf")):
            raise InputError(source, f"config key '{key}': expected a finite number, "
                                     f"got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise wrong()
        return value
    raise TypeError(f"unsupported settings type {tp!r} for {key}")


def _check_range(value, meta: Mapping, key: str, source) -> None:
    """Range and choice checks of one value (each item of a list, each value of a dict)."""
    if isinstance(value, list):
        for v in value:
            _check_range(v, meta, key, source)
        return
    if isinstance(value, dict) or value is None or isinstance(value, (bool, Settings)):
        if isinstance(value, dict):
            for v in value.values():
                _check_range(v, meta, key, source)
        return
    problem = None
    if meta.get("choices") is not None and value not in meta["choices"]:
        problem = f"must be one of {', '.join(map(str, meta['choices']))}, got {value!r}"
    elif isinstance(value, (int, float)):
        if meta.get("minimum") is not None and value < meta["minimum"]:
            problem = f"must be >= {meta['minimum']}, got {value!r}"
        elif meta.get("exclusive_minimum") is not None and value <= meta["exclusive_minimum"]:
            problem = f"must be > {meta['exclusive_minimum']}, got {value!r}"
        elif meta.get("maximum") is not None and value > meta["maximum"]:
            problem = f"must be <= {meta['maximum']}, got {value!r}"
    if problem:
        raise InputError(source, f"config key '{key}': {problem}")


# --- the JSON schema, written from the classes -------------------------------------------

def json_schema(cls: type[Settings], description: str | None = None) -> dict:
    """The JSON schema of a settings class: types, ranges, defaults and descriptions of
    every key; ``additionalProperties: false`` at every level but free-form mappings."""
    hints = typing.get_type_hints(cls)
    properties = {}
    for f in dataclasses.fields(cls):
        prop = _type_schema(hints[f.name])
        meta = f.metadata
        for name, schema_key in (("minimum", "minimum"), ("exclusive_minimum",
                                 "exclusiveMinimum"), ("maximum", "maximum")):
            if meta.get(name) is not None:
                _numeric_target(prop)[schema_key] = meta[name]
        if meta.get("choices") is not None:
            nullable = "null" in (prop.get("type") or [])  # `X | None`: null is a choice too
            _leaf_target(prop)["enum"] = list(meta["choices"]) + ([None] if nullable else [])
        prop["description"] = meta.get("help", "")
        prop["default"] = _plain(_field_default(f))
        properties[f.name] = prop
    schema = {"type": "object"}
    if description or cls.__doc__:
        schema["description"] = description or " ".join(cls.__doc__.split("\n\n")[0].split())
    schema["properties"] = properties
    schema["additionalProperties"] = False
    return schema


def _field_default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()


def _type_schema(tp) -> dict:
    if tp is Any:
        return {}
    if _is_settings(tp):
        return json_schema(tp)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if all(a in _JSON_TYPES for a in args):
            return {"type": [_JSON_TYPES[a] for a in args]}
        return {"anyOf": [_type_schema(a) for a in args]}
    if origin is list:
        return {"type": "array", "items": _type_schema(typing.get_args(tp)[0])}
    if origin is dict:
        item = typing.get_args(tp)[1]
        return {"type": "object", "additionalProperties": _type_schema(item) or True}
    return {"type": _JSON_TYPES[tp]}


def _numeric_target(prop: dict) -> dict:
    """Where a range goes: the items of an array, the values of a mapping, else the value."""
    if prop.get("type") == "array":
        return prop["items"]
    if prop.get("type") == "object" and isinstance(prop.get("additionalProperties"), dict):
        return prop["additionalProperties"]
    return prop


_leaf_target = _numeric_target


# --- settings files: what a stage command reads ------------------------------------------

def read_yaml(path: str | Path, what: str):
    """The document of a YAML (or JSON) file; :class:`InputError` naming ``path`` when it is
    missing or not YAML (``what`` names the file's role: "settings file", "marker panel")."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"{what} not found")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise InputError(path, f"{what} is not valid YAML ({err})") from None


def read_settings_file(path: str | Path) -> dict:
    """A YAML or JSON document of config sections (a workflow config, or the one-section
    file the workflow writes for a job)."""
    document = read_yaml(path, "settings file")
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise InputError(path, "a settings file must be a mapping of config sections")
    return document


def load_section(cls: type[Settings], section: str, path: str | Path | None):
    """``cls`` from section ``section`` of the settings file ``path`` (None: defaults).

    The file may hold other sections too (a whole workflow config); keys of this section
    it does not set keep their defaults. The settings used are logged, so every job's log
    says what it ran with.
    """
    if path is None:
        settings = cls()
    else:
        document = read_settings_file(path)
        settings = cls.from_config(dotted_get(document, section), section, source=path)
    logging.getLogger("pastflow.settings").info(
        "%s settings (%s): %s", section, path or "defaults",
        json.dumps(settings.to_dict()))
    return settings


def dotted_get(document: Mapping, dotted: str, default=None):
    """``document["a"]["b"]`` for ``"a.b"``; ``default`` when a level is missing."""
    value = document
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return default
        value = value[part]
    return value


def write_settings_file(sections: Mapping[str, Any], path: str | Path) -> bool:
    """Write ``{section: values}`` as the JSON file a stage command reads."""
    return write_json_if_changed(_plain(dict(sections)), path)


def write_json_if_changed(document: Any, path: str | Path) -> bool:
    """Write ``document`` as JSON at ``path`` unless it already holds exactly that; return
    whether it was written. An unchanged file keeps its modification time, so only the jobs
    whose settings changed run again."""
    from pastflow.atomic import atomic_path

    path = Path(path)
    # Keys keep their order: some mappings are ordered (simulate.n_cells: first match wins).
    text = json.dumps(document, indent=2) + "\n"
    if path.is_file() and path.read_text() == text:
        return False
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)
    return True


def add_settings_argument(parser, section: str) -> None:
    """The ``--settings FILE`` flag of a stage command that reads config section
    ``section``; without it the command runs on the defaults."""
    parser.add_argument(
        "--settings", type=Path, default=None, metavar="FILE",
        help=f"settings: a workflow config (YAML) or the JSON file the workflow writes "
             f"(results/settings/{section.split('.')[0]}.json); section `{section}` is read "
             f"and keys it does not set keep their defaults (config/README.md)")


PROJECT_ROOT = Path(__file__).resolve().parents[2]


def project_path(path: str | Path) -> Path:
    """A relative config path resolved as documented in the README: against the working
    directory (``--directory``) when it exists there, else against the pastflow checkout
    (``resources/...``, ``config/samples_her2st.tsv``), else as given, so that an error names
    the path the user wrote."""
    path = Path(path)
    if path.is_absolute() or path.exists() or not (PROJECT_ROOT / path).exists():
        return path
    return PROJECT_ROOT / path
