"""The command line's one vocabulary, its help, its deprecated spellings and its run configuration
files, checked against the commands typer actually builds (no command is run here: options are
parsed into a real click context and resolved, as the commands do)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from robustkit.cli.main import app, main, version_text
from robustkit.cli.options import settings as resolve_context
from robustkit.cli.reference import commands
from robustkit.config import COMMANDS, CONFIG_COMMANDS, FLAG_ALIASES, OPTIONS, command_options, resolve
from robustkit.config.files import key_lines, read_toml
from robustkit.config.resolve import Settings, effective_toml
from robustkit.errors import InputError

CLICK = dict(commands(app))
#: Flags that name two different options in different commands, on purpose: training eps vs the
#: radius verified; the training batch vs the bounding batch.
TWO_MEANINGS = {"--eps": {"eps", "train_eps"}, "--batch-size": {"batch_size", "train_batch_size"}}
#: Inputs that each command needs (placeholders: nothing is opened while settings resolve).
NEEDS = {"verify": ["m.onnx", "--eps", "0.1"], "table": ["m.onnx", "--eps", "0.1"], "attack": ["m.onnx", "--eps", "0.1"],
         "bounds": ["m.onnx", "--eps", "0.1"], "stats": ["m.onnx", "--eps", "0.1"], "vnnlib": ["m.onnx", "p.vnnlib"],
         "bench vnncomp": ["bench_dir"], "train": ["--out", "run"], "bench soundness": []}


def context(command: str, args: list[str]) -> Any:
    """A click context of ``command`` with ``args`` parsed (its callback is not run)."""
    cmd = CLICK[command]
    return cmd.make_context(f"robustkit {command}", list(args))


def settings(command: str, args: list[str], rewrite: Any = None) -> Settings:
    ctx = context(command, args)
    with ctx:
        return resolve_context(ctx, command, rewrite)


# -- one vocabulary --------------------------------------------------------------------------------
def test_every_registered_command_is_built_and_every_built_command_registered() -> None:
    assert set(COMMANDS) <= set(CLICK)
    assert set(CLICK) - set(COMMANDS) == {"export", "regularizers"}  # no option of the shared vocabulary


def test_one_flag_one_option() -> None:
    """Across all commands, a flag names one option (one name, kind, unit), except the two flags
    documented to mean two things."""
    meaning: dict[str, set[str]] = {}
    for command in COMMANDS:
        for opt in command_options(command).values():
            for flag in opt.flags:
                meaning.setdefault(flag, set()).add(opt.name)
    several = {f: names for f, names in meaning.items() if len(names) > 1}
    assert several == TWO_MEANINGS


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_click_parameters_are_the_registry(command: str) -> None:
    """Each command's click parameters are exactly its registered options (same flags, same
    default), plus its hidden deprecated spellings."""
    params = {p.name: p for p in CLICK[command].params}
    opts = command_options(command)
    for name, opt in opts.items():
        assert name in params, f"{command}: option {name} not in the command"
        param = params[name]
        assert not param.hidden
        if opt.positional:
            assert param.param_type_name == "argument"
            continue
        assert tuple(param.opts) + tuple(param.secondary_opts) == opt.flags, (command, name)
        default = list(opt.default) if isinstance(opt.default, tuple) else opt.default
        assert param.default == (default if default is not None else ([] if opt.multiple else None)), (command, name)
    hidden = {p.name for p in params.values() if p.hidden}
    aliases = {flag.lstrip("-").replace("-", "_") for flag in FLAG_ALIASES.get(command, {})}
    assert aliases <= hidden
    assert set(params) - set(opts) - hidden == set(), f"{command}: parameters outside the registry"


def test_shared_defaults_agree() -> None:
    """The issue's list: attack steps and restarts, method, bounds, timeout, workers, device,
    format: one default wherever the option appears (except the documented soundness suite)."""
    for name in ("attack_steps", "attack_restarts", "method", "bounds", "timeout", "workers", "device", "format", "n",
                 "seed"):
        defaults = {c: command_options(c)[name].default for c in COMMANDS if name in command_options(c)}
        differing = {c for c, d in defaults.items() if d != OPTIONS[name].default}
        assert differing <= {"bench soundness", "bounds"}, (name, defaults)


# -- help ------------------------------------------------------------------------------------------
def _help(command: str, capsys: pytest.CaptureFixture) -> str:
    assert main([*command.split(), "--help"]) == 0
    text = capsys.readouterr().out
    assert "Usage:" in text
    return text


def _flags_of(command: str) -> set[str]:
    return {o for p in CLICK[command].params if not p.hidden for o in (*p.opts, *p.secondary_opts)} | {"--help", "-h"}


@pytest.mark.parametrize("command", sorted(CLICK))
def test_help_shows_every_default_and_names_only_real_flags(command: str, capsys: pytest.CaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")
    text = _help(command, capsys)  # as the user sees it
    cmd = CLICK[command]
    wide = cmd.context_class(cmd, info_name=f"robustkit {command}", terminal_width=2000, max_content_width=2000)
    flat = " ".join(cmd.get_help(wide).split())  # the same text, unwrapped
    for param in CLICK[command].params:
        if param.hidden or param.param_type_name != "option":
            continue
        assert param.opts[0] in text
        show = param.show_default
        if isinstance(show, str):
            assert f"[default: ({show})]" in flat, (command, param.name, show)
        elif show and param.default not in (None, [], False):
            shown = ", ".join(map(str, param.default)) if isinstance(param.default, list) else str(param.default)
            assert f"[default: {shown}]" in flat, (command, param.name, shown)
    assert "[default: ]" not in flat
    # every flag the help names exists: in this command, or in the command a line names
    for line in text.splitlines():
        named = re.findall(r"robustkit ((?:bench )?[a-z]+)", line)
        allowed = set().union(*(_flags_of(c) for c in named if c in CLICK)) if named else _flags_of(command)
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*|-[a-zA-Z])\b", line):
            if flag in ("-r",) and command == "train":
                continue
            assert flag in allowed | _flags_of(command), f"{command} --help names {flag}, which does not exist: {line}"
    if command not in ("bench soundness",):
        assert "Examples:" in text and f"robustkit {command}" in text


def test_root_help_version_and_short_help(capsys: pytest.CaptureFixture) -> None:
    assert main(["-h"]) == 0
    out = capsys.readouterr().out
    assert all(c.split()[0] in out for c in CLICK)
    assert main(["--version"]) == 0
    version = capsys.readouterr().out.strip()
    assert version == version_text() and re.match(r"robustkit \d+\.\d+\.\d+", version)
    assert main(["verify", "-h"]) == 0 and "--attack-restarts" in capsys.readouterr().out


def test_regularizers_help_names_the_real_train_flag(capsys: pytest.CaptureFixture) -> None:
    text = _help("regularizers", capsys)
    assert "--reg " not in text and "--regularizer" in text and "--regularizer" in _flags_of("train")


# -- deprecated spellings --------------------------------------------------------------------------
ALIAS_VALUES = {"--tighten": ("interval", "interval"), "--results-root": ("res", Path("res")),
                "--steps": ("7", 7), "--restarts": ("2", 2), "--method": ("ibp", "interval"),
                "--time-budget": ("3", 3.0), "--pgd-steps": ("7", 7)}


@pytest.mark.parametrize("command, old", [(c, f) for c, aliases in FLAG_ALIASES.items() for f in aliases])
def test_deprecated_spelling_means_the_new_option(command: str, old: str, capsys: pytest.CaptureFixture) -> None:
    name = FLAG_ALIASES[command][old]
    raw, value = ALIAS_VALUES[old]
    new = command_options(command)[name].flag
    via_old = settings(command, [*NEEDS[command], old, raw])
    err = capsys.readouterr().err
    assert f"{old} is deprecated; use {new}" in err
    via_new = settings(command, [*NEEDS[command], new, raw])
    assert "deprecated" not in capsys.readouterr().err
    assert via_old[name] == via_new[name] == value
    assert dict(via_old.values) == dict(via_new.values)
    # both given: the new spelling wins
    both = settings(command, [*NEEDS[command], new, raw, old, "1" if raw.isdigit() else raw])
    assert both[name] == value


def test_old_out_file_meanings_still_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from robustkit.cli.table import legacy_out

    s = settings("table", ["m.onnx", "--eps", "0.1", "--out", str(tmp_path / "t.md")], legacy_out)
    assert s["table_file"] == tmp_path / "t.md" and s["out"] is None
    assert "deprecated" in capsys.readouterr().err


# -- run configuration files ----------------------------------------------------------------------
def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_config_then_command_line(tmp_path: Path) -> None:
    cfg = write(tmp_path / "run.toml", 'model = "nets/m.onnx"\neps = "8/255"\nn = 7\n[attack]\nsteps = 9\n'
                "[verify]\nmethod = \"milp\"\ntimeout = 12.5\n[milp]\nsolver = \"cbc\"\n[bab]\nsplit = \"relu\"\n")
    s = settings("verify", ["--config", str(cfg), "--n", "3"])
    assert s["model"] == tmp_path / "nets" / "m.onnx"  # relative to the file's folder
    assert (s["eps"], s["n"], s["attack_steps"], s["method"], s["timeout"], s["solver"], s["bab_split"]) == \
        ("8/255", 3, 9, "milp", 12.5, "cbc", "relu")
    assert s.sources["n"] == "command line" and s.sources["attack_steps"] == "config"
    assert s.sources["attack_restarts"] == "default" and s["attack_restarts"] == 4


@pytest.mark.parametrize("text, where, words", [
    ('eps = "0.1"\nmodel = "m.onnx"\n[attack]\nstep = 3\n', ":4: [attack] step", "unknown key"),
    ('eps = "0.1"\nmodel = "m.onnx"\n\n[attack]\nsteps = "many"\n', ":5: [attack] steps", "must be an integer"),
    ('eps = "0.1"\nmodel = "m.onnx"\n[attack]\nrestarts = 0\n', ":4: [attack] restarts", ">= 1"),
    ('eps = "-1"\nmodel = "m.onnx"\n', ":1: eps", "negative"),
    ('eps = "0.1"\nmodel = "m.onnx"\n[verify]\nbounds = "magic"\n', ":4: [verify] bounds", "crown"),
    ('eps = "0.1"\nmodel = "m.onnx"\n[verify]\ntimeout = 0\n', ":4: [verify] timeout", "positive"),
    ('eps = "0.1"\nmodel = "m.onnx"\n[bab]\ndepth_weight = "steep"\n', ":4: [bab] depth_weight", "not a number"),
    ('eps = "0.1"\nmodel = "m.onnx"\n[solver]\nname = "x"\n', ":3: solver", "unknown table"),
    ('eps = "0.1"\nmodels = ["m.onnx"]\n', ":2: models", "an option of table"),
    ('command = "table"\neps = "0.1"\n', ":1: command", "not `robustkit verify`"),
    ('eps = "0.1"\nmodel = "m.onnx"\n[attack]\nsteps = 3\nsteps = 4\n', ":5:", "not valid TOML"),
])
def test_config_errors_name_file_line_and_key(tmp_path: Path, text: str, where: str, words: str) -> None:
    cfg = write(tmp_path / "bad.toml", text)
    with pytest.raises(InputError) as err:
        resolve("verify", {}, cfg)
    message = str(err.value)
    assert str(cfg) in message and words in message, message
    if "TOML" in words:
        assert "line 5" in message
    else:
        assert f"{cfg}{where}" in message, message


def test_config_errors_reach_the_user_with_exit_code_1(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = write(tmp_path / "bad.toml", 'model = "m.onnx"\neps = "0.1"\n[attack]\nsteps = -2\n')
    assert main(["verify", "--config", str(cfg)]) == 1
    assert f"{cfg}:4: [attack] steps must be an integer >= 0" in capsys.readouterr().err
    assert main(["verify", "--config", str(tmp_path / "none.toml")]) == 1
    assert "not found" in capsys.readouterr().err
    assert main(["verify", "--config", str(write(tmp_path / "e.toml", 'n = 3\n'))]) == 1
    err = capsys.readouterr().err
    assert "Error" in err and "MODEL" in err and "--config" in err  # a usage error, like click's own


def test_key_lines_find_keys_in_tables() -> None:
    lines = key_lines('# c\nname = "x"\n\n[attack]\n  steps = 3 # s\n"restarts" = 2\n[output]\nformat="md"\n')
    assert lines[("", "name")] == 2 and lines[("attack", "steps")] == 5 and lines[("attack", "restarts")] == 6
    assert lines[("output", "format")] == 8 and lines[("", "attack")] == 4


@pytest.mark.parametrize("command", CONFIG_COMMANDS)
def test_effective_config_round_trips(command: str, tmp_path: Path) -> None:
    """Settings written as the effective config and read back are the same settings."""
    extra = {"verify": ["--n", "7", "--bounds", "alpha-crown", "--bab-depth-weight", "0.5", "--workers", "2",
                        "--eps", "8/255"],
             "table": ["--eps", "2/255", "--columns", "model,n,verified_ci", "--name", "zoo", "--format", "latex"],
             "vnnlib": ["--method", "milp", "--formulation", "max", "--timeout", "30"],
             "bench vnncomp": ["--timeout-scale", "0.25", "--filter", "256x2", "--limit", "3"],
             "train": ["--regularizer", "pgd:steps=5", "-r", "relu-stability=0.002", "--lr", "0:1e-3,4:2e-4",
                       "--eps", "0.1", "--eps-ramp", "0:3", "--hidden", "16"]}[command]
    first = settings(command, [*NEEDS[command], *extra])
    folder = tmp_path / "results"
    folder.mkdir()
    path = folder / "config.toml"
    path.write_text(effective_toml(first.replace(out=folder), folder))
    again = resolve(command, {}, path)
    saved = {n for n, o in command_options(command).items() if o.saved}
    for name in saved:
        want = first.replace(out=folder)[name]
        got = again[name]
        if isinstance(want, Path):
            want, got = want.resolve(), Path(got).resolve()
        elif isinstance(want, tuple) and want and isinstance(want[0], Path):
            want, got = tuple(p.resolve() for p in want), tuple(Path(p).resolve() for p in got)
        assert got == want, (command, name)
    assert read_toml(path).data["command"] == command


def test_config_globs_are_relative_to_the_file(tiny_mnist, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "nets").mkdir()
    for name in ("b.onnx", "a.onnx"):
        (tmp_path / "nets" / name).write_bytes(tiny_mnist.path.read_bytes())
    (tmp_path / "cfg").mkdir()
    write(tmp_path / "cfg" / "t.toml", 'models = ["../nets/*.onnx", "../nets/a.onnx"]\neps = [0.1]\n'
                                       '[output]\nout = "../res"\n')
    monkeypatch.chdir(tmp_path)
    s = resolve("table", {}, Path("cfg/t.toml"))  # a relative path to the file, from elsewhere
    assert [p.resolve() for p in s["models"]] == [tmp_path / "nets" / "a.onnx", tmp_path / "nets" / "b.onnx"]
    assert all(p.is_file() for p in s["models"]) and s["out"].resolve() == tmp_path / "res"
