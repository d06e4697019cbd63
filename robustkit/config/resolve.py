"""Resolving the settings of one command: the defaults, then a TOML run configuration, then the
options given on the command line, each value checked against the option's kind, range and
choices (an error names the flag, or the file, line and key); and writing the effective
configuration, which reruns the command with ``--config`` alone."""

from __future__ import annotations

import glob
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from robustkit.config.files import TomlFile, dump_toml, read_toml, write_text_atomic
from robustkit.config.options import (
    KEY_ALIASES, OPTIONS, SECTIONS, Option, command_options, commands_with_key, option_by_key,
)
from robustkit.errors import InputError
from robustkit.numbers import parse_eps, parse_number

CONFIG_FILE = "config.toml"


class MissingOption(InputError):
    """A required option (or positional input) that neither the command line nor the config gave."""


@dataclass(frozen=True)
class Settings:
    """The resolved options of one command: ``values[name]`` and where each came from
    (``sources[name]``: ``default``, ``config`` or ``command line``). ``notes``: deprecation
    warnings to show the user."""

    command: str
    values: Mapping[str, Any]
    sources: Mapping[str, str]
    config_path: Path | None = None
    notes: tuple[str, ...] = field(default=())

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def given(self, name: str) -> bool:
        """Whether ``name`` came from the command line or the config file (not the default)."""
        return self.sources.get(name, "default") != "default"

    def replace(self, **values: Any) -> "Settings":
        """These settings with ``values`` set (e.g. the results folder a run chose)."""
        merged = {**self.values, **values}
        sources = {**self.sources, **{k: self.sources.get(k, "run") for k in values}}
        return replace(self, values=MappingProxyType(merged), sources=MappingProxyType(sources))


# -- checking one value ----------------------------------------------------------------------------
def _number(opt: Option, raw: Any, where: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise InputError(f"{where} must be a number, got {raw!r}")
    value = parse_number(raw, where) if isinstance(raw, str) else float(raw)
    if not math.isfinite(value):
        raise InputError(f"{where} must be a finite number, got {raw!r}")
    if opt.positive and not value > 0:
        raise InputError(f"{where} must be positive, got {raw!r}")
    if opt.minimum is not None and value < opt.minimum:
        raise InputError(f"{where} must be a number >= {opt.minimum:g}, got {raw!r}")
    return value


def _one(opt: Option, raw: Any, where: str, base: Path | None) -> Any:
    kind = opt.kind
    if kind == "bool":
        if not isinstance(raw, bool):
            raise InputError(f"{where} must be true or false, got {raw!r}")
        return raw
    if kind == "int":
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise InputError(f"{where} must be an integer, got {raw!r}")
        if opt.minimum is not None and raw < opt.minimum:
            raise InputError(f"{where} must be an integer >= {opt.minimum:g}, got {raw}")
        return raw
    if kind == "number":
        return _number(opt, raw, where)
    if kind == "eps":
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
            raise InputError(f"{where}: eps values are numbers or strings like \"8/255\", got {raw!r}")
        text = raw.strip() if isinstance(raw, str) else repr(raw)
        try:
            parse_eps(text)
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from None
        return text
    if kind == "path":
        if not isinstance(raw, (str, os.PathLike)) or not os.fspath(raw):
            raise InputError(f"{where} must be a path, got {raw!r}")
        path = Path(os.path.expanduser(os.fspath(raw)))
        return base / path if base is not None and not path.is_absolute() else path
    if not isinstance(raw, str):
        raise InputError(f"{where} must be a string, got {raw!r}")
    if kind == "choice":
        value = raw.strip()
        if opt.name == "bounds" and value.lower() == "ibp":
            value = "interval"
        if value not in opt.choices:
            raise InputError(f"{where}: {raw!r} is not a valid {opt.what}; choose one of {', '.join(opt.choices)}")
        return value
    return raw


def _glob(raw: str, where: str, base: Path | None) -> list[Path]:
    full = (base / raw) if base is not None and not Path(raw).is_absolute() else Path(raw)
    if not glob.has_magic(raw):
        return [full]
    matches = sorted(Path(m) for m in glob.glob(str(full)))
    if not matches:
        raise InputError(f"{where}: pattern {raw!r} matches no file (looked in {full.parent})")
    return matches


def check_value(opt: Option, raw: Any, where: str, base: Path | None = None) -> Any:
    """``raw`` checked and converted for ``opt`` (a tuple for a repeatable option); ``base``: the
    folder relative paths of a config file are relative to; glob patterns are expanded there."""
    if not opt.multiple:
        if isinstance(raw, (list, tuple)):
            if len(raw) != 1:
                raise InputError(f"{where} takes one value, got {len(raw)}")
            raw = raw[0]
        return _one(opt, raw, where, base)
    items = list(raw) if isinstance(raw, (list, tuple)) else [raw]
    if opt.kind == "path" and base is not None:  # config files may name models by glob patterns
        expanded: list[Any] = []
        for item in items:
            if not isinstance(item, str):
                raise InputError(f"{where} must list paths, got {item!r}")
            expanded += _glob(item, where, base)
        items, base = expanded, None  # the patterns were joined to the file's folder already
    values = tuple(_one(opt, item, where, base) for item in items)
    return tuple(dict.fromkeys(values)) if opt.kind == "path" else values


def default_value(opt: Option) -> Any:
    if opt.default is None:
        return () if opt.multiple else None
    return check_value(opt, opt.default, f"default of {opt.flag}")


# -- resolving -------------------------------------------------------------------------------------
def _apply_file(command: str, file: TomlFile, values: dict[str, Any], sources: dict[str, str],
                notes: list[str]) -> None:
    opts = command_options(command)
    entries: list[tuple[str, str, Any]] = []
    for key, value in file.data.items():
        if isinstance(value, dict):
            if key not in SECTIONS or not key:
                raise InputError(f"{file.where('', key)}: unknown table; known tables: "
                                 + ", ".join(f"[{s}]" for s in SECTIONS if s))
            entries += [(key, k, v) for k, v in value.items()]
        else:
            entries.append(("", key, value))
    for section, key, value in entries:
        where = file.where(section, key)
        if section == "" and key == "command":
            if value != command:
                raise InputError(f"{where}: this configuration is for `robustkit {value}`, not `robustkit {command}`")
            continue
        opt = option_by_key(command, section, key)
        if opt is None or opt.name == "config":
            others = [c for c in commands_with_key(section, key) if c != command]
            taken = ", ".join(o.key for o in opts.values() if o.section == section and o.name != "config")
            raise InputError(f"{where}: unknown key for `robustkit {command}`"
                             + (f" (an option of {', '.join(others)})" if others else "")
                             + f"; {'[' + section + ']' if section else 'the root table'} takes: {taken or 'nothing'}")
        if (opt.section, opt.key) != (section, key):
            new = f"[{opt.section}] {opt.key}" if opt.section else opt.key
            notes.append(f"{where} is deprecated; write {new} (the old key goes in the next release)")
        values[opt.name] = check_value(opt, value, where, file.path.parent)
        sources[opt.name] = "config"


def resolve(command: str, given: Mapping[str, Any], config: Path | None = None,
            notes: tuple[str, ...] = ()) -> Settings:
    """The settings of ``command``: defaults < ``config`` (a TOML file) < ``given`` (the options
    given on the command line, by option name). Every value is checked; a required option missing
    from both is a :class:`MissingOption`."""
    opts = command_options(command)
    values = {name: default_value(opt) for name, opt in opts.items()}
    sources = {name: "default" for name in opts}
    found: list[str] = list(notes)
    if config is not None:
        _apply_file(command, read_toml(config), values, sources, found)
    for name, raw in given.items():
        opt = opts[name]
        values[name] = check_value(opt, raw, opt.flag if opt.flags else opt.name.upper())
        sources[name] = "command line"
    for name, opt in opts.items():
        if opt.required and values[name] in (None, ()):
            spelled = opt.flag if opt.flags else opt.name.upper()
            raise MissingOption(f"missing {spelled}: give it on the command line or as {opt.where} in a --config file")
    return Settings(command, MappingProxyType(values), MappingProxyType(sources), config, tuple(found))


# -- the effective configuration -------------------------------------------------------------------
def _for_file(opt: Option, value: Any, folder: Path) -> Any:
    def path(p: Path) -> str:
        full = Path(p).resolve()
        if opt.name == "out" and full == folder.resolve():
            return "."
        return str(full)

    if value is None:
        return None
    if isinstance(value, tuple):
        return [path(v) if isinstance(v, Path) else v for v in value]
    return path(value) if isinstance(value, Path) else value


def effective_toml(settings: Settings, folder: Path) -> str:
    """The TOML text that reruns ``settings`` with ``robustkit <command> --config FILE`` when
    written into ``folder`` (paths absolute, the results folder ``.`` when it is ``folder``)."""
    tables: dict[str, dict[str, tuple[Any, str]]] = {s: {} for s in SECTIONS}
    tables[""]["command"] = (settings.command, "")
    for name, opt in command_options(settings.command).items():
        if not opt.saved:
            continue
        value = _for_file(opt, settings.values.get(name), folder)
        comment = opt.flag if opt.flags else "positional " + name.upper()
        if opt.unit:
            comment += f" ({opt.unit})"
        if value is None or value == []:
            value, comment = None, f"{comment}; not set: {opt.default_text or 'none'}"
        tables[opt.section][opt.key] = (value, comment)
    header = (f"robustkit {settings.command}: the effective configuration of a run "
              f"({time.strftime('%Y-%m-%d %H:%M:%S %z')}).\n"
              f"Rerun it with `robustkit {settings.command} --config {CONFIG_FILE}`; options given "
              "on the command line override it.\nPaths are absolute; the results folder is the one this file is in.")
    return dump_toml(tables, header)


def write_effective(settings: Settings, path: Path) -> Path:
    """Write the effective configuration to ``path`` (atomically) and return it."""
    return write_text_atomic(path, effective_toml(settings, path.parent))


def option(name: str) -> Option:
    """The option called ``name`` (for help texts and docs)."""
    return OPTIONS[name]


__all__ = ["CONFIG_FILE", "KEY_ALIASES", "MissingOption", "Settings", "check_value", "effective_toml", "option",
           "resolve", "write_effective"]
