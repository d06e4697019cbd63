"""The CLI reference (``docs/cli.md``), generated from the commands themselves: the click
commands typer builds (usage, help, examples, every visible option with its default) and the
option registry (config-file keys, kinds, units, deprecated spellings).

    python -m robustkit.cli.reference           # rewrite docs/cli.md
    python -m robustkit.cli.reference --check   # exit 1 when docs/cli.md is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Iterator

import typer

from robustkit.config.options import COMMANDS, CONFIG_COMMANDS, FLAG_ALIASES, KEY_ALIASES, OPTIONS, command_options

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"

#: The shared vocabulary: the options several commands take, in the order of the table.
VOCABULARY = ("eps", "n", "start", "dataset", "data_dir", "attack_steps", "attack_restarts", "method", "bounds",
              "timeout", "workers", "device", "seed", "out", "format", "quiet", "config")
_KIND = {"int": "integer", "number": "number", "eps": "number or fraction", "choice": "choice", "str": "text",
         "path": "path", "bool": "flag"}


def commands(app: typer.Typer | None = None) -> Iterator[tuple[str, Any]]:
    """``(name, click command)`` of every command, subcommands as ``"bench vnncomp"``."""
    if app is None:
        from robustkit.cli.main import app
    group = typer.main.get_command(app)
    ctx = group.context_class(group, info_name="robustkit")
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        sub = getattr(cmd, "list_commands", None)
        if sub is None:
            yield name, cmd
            continue
        sub_ctx = cmd.context_class(cmd, info_name=name, parent=ctx)
        for child in cmd.list_commands(sub_ctx):
            yield f"{name} {child}", cmd.get_command(sub_ctx, child)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _default(param: Any) -> str:
    show = getattr(param, "show_default", None)
    if isinstance(show, str):
        return show
    if getattr(param, "is_flag", False):
        return "off"
    default = param.default
    if default is None or default == [] or default == () or show is False:
        return "-"
    if isinstance(default, (list, tuple)):
        return ", ".join(map(str, default))
    return str(default)


def _key(command: str, name: str) -> str:
    opts = command_options(command) if command in COMMANDS else {}
    if name not in opts or command not in CONFIG_COMMANDS or name == "config":
        return "-"
    opt = opts[name]
    return f"`[{opt.section}] {opt.key}`" if opt.section else f"`{opt.key}`"


def _shown(opt: Any) -> str:
    """An option's default as the reference shows it."""
    if opt.required:
        return "required"
    if opt.default_text:
        return str(opt.default_text)
    if opt.kind == "bool":
        return "off"
    if opt.default is None or opt.default == ():
        return "-"
    return ", ".join(map(str, opt.default)) if isinstance(opt.default, (list, tuple)) else str(opt.default)


def _argument(command: str, param: Any) -> str:
    """A positional input as usage shows it: bare when the command needs it (from the command line
    or its ``--config``), in brackets when optional."""
    name = param.metavar or param.name.upper()
    opts = command_options(command) if command in COMMANDS else {}
    required = opts[param.name].required if param.name in opts else param.required
    return name if required else f"[{name}]"


def vocabulary_table() -> list[str]:
    lines = ["| option | config key | kind | unit | default | commands |", "|---|---|---|---|---|---|"]
    for name in VOCABULARY:
        opt = OPTIONS[name]
        uses = [c for c in COMMANDS if name in command_options(c)]
        default = _shown(opt)
        other = [f"{c}: {_shown(o)}" for c, o in ((c, command_options(c)[name]) for c in uses)
                 if _shown(o) != default]
        default += f" ({'; '.join(other)})" if other else ""
        key = f"[{opt.section}] {opt.key}" if opt.section else opt.key
        lines.append(f"| `{opt.flag}` | `{key}` | {_KIND[opt.kind]} | {opt.unit or '-'} | {_cell(default)} | "
                     f"{', '.join(uses)} |")
    return lines


def render(app: typer.Typer | None = None) -> str:
    """The whole reference as Markdown."""
    out = [
        "# CLI reference",
        "",
        "Generated from the commands by `python -m robustkit.cli.reference` (a test fails when this file is",
        "out of date). Every command takes `-h`/`--help`; `robustkit --version` prints the version and commit.",
        "Exit codes: 0 success, 1 usage or input error, 2 internal error.",
        "",
        "## One vocabulary",
        "",
        "The same option has the same name, kind, unit and default in every command that takes it",
        "(declared once, in `robustkit/config/options.py`). Where a command's default differs, it says so.",
        "",
        *vocabulary_table(),
        "",
        "`--out` is the folder a command writes its results into (records, `run.json`, the effective",
        "`config.toml`); `export --out` is the one file it writes. `--bounds` is the bound method; in `verify`,",
        "`vnnlib`, `bench vnncomp` and `table` it decides stable ReLUs and starts the complete `--method`.",
        "`--device` is on the commands that run a torch model on a device (`train`, `attack`); verification",
        "runs on the CPU, where its proofs are checked in float64. `--format` takes what each command can",
        "print (`latex` for tables only).",
        "",
        "## Run configuration files",
        "",
        f"`--config FILE.toml` works on {', '.join(f'`{c}`' for c in CONFIG_COMMANDS)}: the file may hold any",
        "option of that command (the table below each command gives its key), options given on the command",
        "line override it, relative paths are relative to the file's folder, and an unknown key, a wrong",
        "type or a value out of range is an error naming the file, the line and the key. Each run writes",
        "its effective configuration next to its results (`config.toml`; `table`: `<name>.config.toml`),",
        "which reruns it with `--config` alone. See [the user guide](user-guide.md#run-configuration-files).",
        "",
        "## Deprecated spellings",
        "",
        "Kept for one release, hidden from `--help`; each prints a warning naming the new spelling.",
        "",
        "| command | old | new |",
        "|---|---|---|",
    ]
    for command, aliases in FLAG_ALIASES.items():
        for old, name in aliases.items():
            out.append(f"| {command} | `{old}` | `{command_options(command)[name].flag}` |")
    out.append("| verify, table, bench soundness | `--out FILE.jsonl` / `FILE.md` | `--out DIR` "
               "(table: `--table-file FILE`) |")
    for (section, key), name in KEY_ALIASES.items():
        new = OPTIONS[name]
        out.append(f"| config files | `{'[' + section + '] ' if section else ''}{key}` | "
                   f"`{'[' + new.section + '] ' if new.section else ''}{new.key}` |")
    out += ["", "## Commands"]
    for name, cmd in commands(app):
        out += ["", f"### robustkit {name}", ""]
        params = [p for p in cmd.params if not getattr(p, "hidden", False)]
        args = " ".join(_argument(name, p) for p in params if p.param_type_name == "argument")
        out += ["```", f"robustkit {name} [OPTIONS] {args}".rstrip(), "```", "", " ".join((cmd.help or "").split()), ""]
        rows = ["| option | config key | default | help |", "|---|---|---|---|"]
        for p in params:
            flags = ", ".join(f"`{o}`" for o in [*p.opts, *getattr(p, "secondary_opts", [])]) \
                if p.param_type_name == "option" else f"`{p.metavar or p.name.upper()}`"
            rows.append(f"| {flags} | {_key(name, p.name)} | {_cell(_default(p))} | {_cell(p.help or '')} |")
        out += rows
        if cmd.epilog:
            examples = [ln.strip() for ln in cmd.epilog.splitlines() if ln.strip().startswith("robustkit")]
            out += ["", "Examples:", "", "```", *examples, "```"]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write docs/cli.md from the commands.")
    ap.add_argument("--check", action="store_true", help="exit 1 when docs/cli.md is out of date")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        ok = DOC.is_file() and DOC.read_text(encoding="utf-8") == text
        print(f"{DOC} is up to date" if ok else f"{DOC} is out of date: run python -m robustkit.cli.reference")
        return 0 if ok else 1
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text, encoding="utf-8")
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
