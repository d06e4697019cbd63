"""typer parameters built from the option registry (:mod:`robustkit.config.options`), and the
settings of a command from what the user typed: every command declares its parameters as
``name: type = opt("command", "name")``, so the flag, help, default and its display come from the
one declaration."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import typer

from robustkit.config.options import FLAG_ALIASES, command_options
from robustkit.config.resolve import MissingOption, Settings, resolve

logger = logging.getLogger(__name__)

#: Parameter sources that mean "the user gave it" (click's ParameterSource names).
_GIVEN = {"COMMANDLINE", "ENVIRONMENT", "PROMPT"}


def _help(command: str, name: str) -> str:
    opt = command_options(command)[name]
    text = opt.help.replace("{choices}", ", ".join(opt.choices))
    if opt.unit == "s":
        text += " Seconds."
    if opt.required and not opt.positional:
        text += " Required (here or in --config)." if "config" in command_options(command) else " Required."
    return text


def opt(command: str, name: str) -> Any:
    """The typer parameter of option ``name`` of ``command``: an Argument for a positional input,
    else an Option with the registry's flags, help and default."""
    spec = command_options(command)[name]
    if spec.positional:
        return typer.Argument(None, help=_help(command, name), show_default=False, metavar=name.upper())
    default: Any = spec.default
    if spec.multiple:
        default = list(default) if default else []
    show: bool | str = True
    if spec.default_text is not None:
        show = spec.default_text
    elif default is None or default == [] or spec.kind == "bool":
        show = False
    return typer.Option(default, *spec.flags, help=_help(command, name), show_default=show)


def alias(command: str, flag: str) -> Any:
    """A hidden, deprecated spelling of one of ``command``'s options (see ``FLAG_ALIASES``)."""
    name = FLAG_ALIASES[command][flag]
    return typer.Option(None, flag, hidden=True, help=f"Deprecated spelling of {command_options(command)[name].flag}.")


def alias_param(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _usage_error(message: str, ctx: typer.Context) -> Exception:
    """click's UsageError (of the click that typer runs on), so that a missing input reads like
    click's own 'Missing argument' (exit code 1)."""
    for cls in typer.BadParameter.__mro__:
        if cls.__name__ == "UsageError":
            return cls(message, ctx=ctx)  # type: ignore[no-any-return]
    return typer.BadParameter(message, ctx=ctx)


def settings(ctx: typer.Context, command: str,
             rewrite: Callable[[dict[str, Any]], None] | None = None) -> Settings:
    """The resolved settings of ``command``: defaults < ``--config`` < the options typed (hidden
    deprecated spellings mapped to their option, with a warning on stderr). ``rewrite`` may change
    the typed options (by name) before they are applied, for a deprecated meaning of an option."""
    opts = command_options(command)
    aliases = {alias_param(f): (f, n) for f, n in FLAG_ALIASES.get(command, {}).items()}
    given: dict[str, Any] = {}
    notes: list[str] = []
    late: dict[str, Any] = {}
    for pname, value in ctx.params.items():
        source = ctx.get_parameter_source(pname)
        if source is None or source.name not in _GIVEN:
            continue
        if pname in aliases:
            flag, name = aliases[pname]
            notes.append(f"{flag} is deprecated; use {opts[name].flag} (the old spelling goes in the next release)")
            late[name] = value
        elif pname in opts and pname != "config":
            given[pname] = value
    for name, value in late.items():
        given.setdefault(name, value)
    if rewrite is not None:
        rewrite(given)
    config = ctx.params.get("config")
    try:
        resolved = resolve(command, given, Path(config) if config else None, tuple(notes))
    except MissingOption as exc:
        raise _usage_error(str(exc), ctx) from None
    for note in resolved.notes:
        typer.echo(f"warning: {note}", err=True)
    return resolved
