"""``robustkit regularizers``: list the training regularizers with paper, terms and defaults."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from robustkit.cli.common import EXAMPLES
from robustkit.errors import InputError
from robustkit.regularizers.registry import REGULARIZERS, describe_regularizers


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(_fmt(v) for v in value) or "()"
    return str(value)


def regularizers_command(
    name: str = typer.Argument(None, help="Show only this regularizer."),
) -> None:
    """List the training regularizers: paper, loss terms, weight option and defaults.

    Use them with `robustkit train --regularizer NAME[=WEIGHT][:KEY=VALUE...]` (or -r), e.g.
    `-r hamming=9000`.
    """
    infos = describe_regularizers()
    if name is not None:
        key = name.strip().lower().replace("_", "-")
        infos = [i for i in infos if i.name == key]
        if not infos:
            raise InputError(f"unknown regularizer {name!r}; valid names: {', '.join(REGULARIZERS)}")
    table = Table(title="robustkit regularizers (spec: NAME[=WEIGHT][:KEY=VALUE...])", show_lines=True)
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("paper / what")
    table.add_column("terms")
    table.add_column("WEIGHT sets")
    table.add_column("defaults", no_wrap=True)
    for info in infos:
        what = f"{info.paper}\n{info.summary}"
        if info.replaces_clean_loss:
            what += "\n(replaces the clean cross-entropy)"
        defaults = "\n".join(f"{k}={_fmt(v)}" for k, v in info.defaults.items())
        table.add_row(info.name, what, "\n".join(info.terms) or "-", info.weight_field, defaults)
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Add the ``regularizers`` command."""
    app.command("regularizers", epilog=EXAMPLES["regularizers"])(regularizers_command)
