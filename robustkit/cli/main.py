"""The ``robustkit`` entry point: a typer app with one command per module.

Exit codes: 0 success, 1 usage or input error, 2 internal error.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Optional

import typer

from robustkit.errors import InputError

app = typer.Typer(
    name="robustkit",
    help="Train small ReLU nets to be verifiably robust, then prove it.\n\n"
         "Every command takes -h/--help. Exit codes: 0 success, 1 usage or input error, 2 internal error.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # plain help: no Rich markup, so that text in brackets (defaults, units) is printed as written
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)


def version_text() -> str:
    """``robustkit VERSION`` and the git commit of the source, when it runs from a checkout."""
    from importlib import metadata

    from robustkit.report.run_info import git_commit

    try:
        version = metadata.version("robustkit")
    except metadata.PackageNotFoundError:
        from robustkit import __version__ as version
    git = git_commit()
    commit = git.get("commit")
    return f"robustkit {version}" + (f" (commit {commit[:12]}{', modified' if git.get('dirty') else ''})" if commit else "")


def _version(value: bool) -> None:
    if value:
        typer.echo(version_text())
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(None, "--version", "-V", callback=_version, is_eager=True,
                                           help="Print the version and exit."),
) -> None:
    pass

# Each entry: module under robustkit.cli defining a function ``register(app)``.
COMMAND_MODULES = [
    "train",
    "export",
    "verify",
    "attack",
    "bounds",
    "vnnlib_cmd",
    "bench",
    "stats",
    "table",
    "regularizers_cmd",
]

for _name in COMMAND_MODULES:
    try:
        _mod = importlib.import_module(f"robustkit.cli.{_name}")
    except ModuleNotFoundError as _exc:  # a command not yet present in this build
        if _exc.name != f"robustkit.cli.{_name}":
            raise
        continue
    _mod.register(app)


def _click_kinds() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """The usage-error and abort exception classes: click's, when installed, and those of the copy
    of click that typer >= 0.2x carries inside it (``typer._click``), which do not derive from
    click's (such a typer no longer depends on click: a fresh install may have none)."""
    usage: list[type] = []
    aborts: list[type] = [typer.Abort]
    try:
        import click
    except ImportError:
        pass
    else:
        usage.append(click.ClickException)
        aborts.append(click.exceptions.Abort)
    try:
        from typer._click import exceptions as vendored  # type: ignore[import-not-found]
    except ImportError:
        pass
    else:
        usage.append(vendored.ClickException)
    return tuple(usage), tuple(aborts)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; map errors to exit codes (1 input, 2 internal)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app(args=argv, prog_name="robustkit", standalone_mode=False)
    except InputError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        return 1
    except KeyboardInterrupt:
        typer.secho("interrupted; finished results are kept", err=True)
        return 130
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        return int(code or 0)
    except Exception as exc:  # click usage errors and internal errors
        usage, aborts = _click_kinds()
        if isinstance(exc, aborts):
            typer.secho("aborted", err=True)
            return 130
        if isinstance(exc, usage):
            exc.show()  # type: ignore[attr-defined]
            return 1
        logging.getLogger("robustkit").exception("internal error")
        typer.secho(f"internal error: {type(exc).__name__}: {exc}", err=True, fg=typer.colors.RED)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
