"""The documentation stays true: the CLI reference is the commands' own, every results file is
indexed with its command, the models index is current, links resolve, the README's commands
exist, and the packaging declares ranges for what is used (and the VNN-COMP install script runs)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from robustkit.cli import reference
from robustkit.cli.main import app
from robustkit.config.files import read_toml

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
CLICK = dict(reference.commands(app))


def test_cli_reference_is_generated_from_the_commands() -> None:
    assert (DOCS / "cli.md").read_text(encoding="utf-8") == reference.render(), \
        "docs/cli.md is out of date: run python -m robustkit.cli.reference"
    assert reference.main(["--check"]) == 0


def test_cli_reference_covers_every_command_and_visible_option() -> None:
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    for name, cmd in CLICK.items():
        section = text.split(f"### robustkit {name}\n", 1)[1].split("\n### ", 1)[0]
        for param in cmd.params:
            if param.hidden or param.param_type_name != "option":
                continue
            assert f"`{param.opts[0]}`" in section, (name, param.opts[0])


def test_results_index_links_every_results_file_with_a_command() -> None:
    index = (DOCS / "results.md").read_text(encoding="utf-8")
    rows = [ln for ln in index.splitlines() if ln.startswith("| [")]
    for path in sorted((REPO / "verify" / "results").iterdir()):
        link = f"](../verify/results/{path.name})"
        row = next((r for r in rows if link in r), None)
        assert row is not None, f"docs/results.md does not link verify/results/{path.name}"
        command = row.rstrip(" |").rsplit(" | ", 1)[-1]
        assert re.search(r"`(OMP_NUM_THREADS=1 )?(python verify/|robustkit )", command) or "python -c" in command, \
            f"no command for {path.name}: {command}"


def test_results_commands_name_existing_scripts_and_options() -> None:
    index = (DOCS / "results.md").read_text(encoding="utf-8")
    for script in set(re.findall(r"python (verify/[a-z_0-9]+\.py)", index)):
        assert (REPO / script).is_file(), script
    _check_robustkit_lines(re.findall(r"`(robustkit [^`]+)`", index), "docs/results.md")


def _check_robustkit_lines(lines: list[str], where: str) -> None:
    """Each ``robustkit CMD ...`` names a command and only flags it has (hidden aliases excluded)."""
    for line in lines:
        words = shlex.split(line.split("#")[0].replace("|", " "))[1:]
        if not words or words[0].startswith("-"):
            continue
        name = " ".join(words[:2]) if words[0] == "bench" else words[0]
        assert name in CLICK, f"{where}: unknown command in {line!r}"
        flags = {o for p in CLICK[name].params if not p.hidden for o in (*p.opts, *p.secondary_opts)} | {"-h", "--help"}
        for word in words:
            if word.startswith("-") and not re.fullmatch(r"-?\d.*", word):
                assert word.split("=")[0] in flags, f"{where}: {name} has no option {word} ({line!r})"


def test_readme_and_guide_commands_exist() -> None:
    for doc in (REPO / "README.md", DOCS / "user-guide.md", REPO / "vnncomp" / "README.md", REPO / "models" / "README.md"):
        text = doc.read_text(encoding="utf-8")
        blocks = re.findall(r"```([a-z]*)\n(.*?)```", text, flags=re.S)
        lines = [ln.strip() for lang, b in blocks if lang != "python" for ln in b.splitlines()]
        lines = [ln.split("&& ", 1)[1] if "&& robustkit" in ln else ln for ln in lines]
        lines = [ln[ln.index("robustkit "):] for ln in lines if "robustkit " in ln and not ln.startswith(("#", "error:"))
                 and not ln.startswith("pip") and "python " not in ln.split("robustkit ")[0]]
        _check_robustkit_lines([ln for ln in lines if ln.startswith("robustkit ")], doc.name)


def test_readme_is_short_and_keeps_its_two_commands() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 100
    ci = (REPO / ".ci" / "run").read_text()
    install = re.search(r'^pip install .*$', ci, flags=re.M).group(0)
    assert install in text, "the README's install line is the one .ci/run runs"
    assert "\npython -m pytest\n" in text and re.search(r"^python -m pytest$", ci, flags=re.M)
    assert re.search(r"&& robustkit verify [^\n]*models/mnist/mnist_small_pgd_rs\.onnx", text)
    assert (REPO / "models" / "mnist" / "mnist_small_pgd_rs.onnx").is_file()


def test_relative_links_resolve() -> None:
    docs = [REPO / "README.md", REPO / "models" / "README.md", REPO / "vnncomp" / "README.md", *DOCS.glob("*.md")]
    for doc in docs:
        text = doc.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            assert file.exists(), f"{doc.relative_to(REPO)} links {target}, which does not exist"
            if anchor and file.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", file.read_text(encoding="utf-8"), flags=re.M)
                slugs = {re.sub(r"[^a-z0-9 _-]", "", h.lower()).replace(" ", "-") for h in headings}
                assert anchor in slugs, f"{doc.relative_to(REPO)} links #{anchor}; {file.name} has {sorted(slugs)}"


def test_soundness_page_holds_the_model_and_its_assumptions() -> None:
    text = (DOCS / "soundness.md").read_text(encoding="utf-8")
    assert re.search(r"^## .*assumptions", text, flags=re.M | re.I) and "bench soundness" in text
    assert "docs/soundness.md" in (REPO / "README.md").read_text(encoding="utf-8")


def test_models_are_grouped_by_dataset_and_indexed() -> None:
    sys.path.insert(0, str(REPO / "verify"))
    try:
        import models_index
    finally:
        sys.path.remove(str(REPO / "verify"))
    assert not list((REPO / "models").glob("*.onnx")), "models/ holds one folder per dataset"
    index = (REPO / "models" / "README.md").read_text(encoding="utf-8")
    assert index == models_index.render(), "models/README.md is out of date: run python verify/models_index.py"
    for path in (REPO / "models").glob("*/*.onnx"):
        assert f"[{path.stem}]({path.parent.name}/{path.stem}.md)" in index
        assert path.with_suffix(".md").is_file()
        assert path.parent.name in ("mnist", "cifar10")


def test_benchmark_definitions_are_run_configurations() -> None:
    from robustkit.config.benchmark import load_benchmark

    for name in ("mnist.toml", "cifar10.toml"):
        bench = load_benchmark(REPO / "verify" / name)
        assert read_toml(REPO / "verify" / name).data["command"] == "table"
        assert bench.table.models and all(m.is_file() for m in bench.table.models)


# -- packaging -------------------------------------------------------------------------------------
def _requirements() -> list[str]:
    project = read_toml(REPO / "pyproject.toml").data["project"]
    return list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]


def test_dependencies_are_ranges_not_pins() -> None:
    project = read_toml(REPO / "pyproject.toml").data["project"]
    deps = {re.split(r"[<>=!;\[ ]", d, 1)[0].lower(): d for d in project["dependencies"]}
    assert not [d for d in _requirements() if "==" in d], "exact pins in pyproject.toml"
    assert not re.search(r"<\s*=?\s*2\.13", deps["torch"]) and ">=" in deps["torch"]
    assert "!=1.15.1" in deps["highspy"] and ">=" in deps["highspy"]
    assert "pulp" in deps  # CBC through PuLP: the licence-free second solver
    assert "python_version < '3.11'" in deps["tomli"].replace('"', "'")
    assert not any("hypothesis" in d for d in _requirements())


def test_every_dependency_is_imported() -> None:
    imports = {"onnxruntime": "onnxruntime", "highspy": "highspy", "pulp": "pulp", "typer": "typer", "rich": "rich",
               "matplotlib": "matplotlib", "torch": "torch", "numpy": "numpy", "scipy": "scipy", "onnx": "onnx",
               "tomli": "tomli", "pytest": "pytest", "dask": "dask", "distributed": "distributed"}
    sources = "\n".join(p.read_text(encoding="utf-8") for p in (REPO / "robustkit").rglob("*.py"))
    sources += "\n".join(p.read_text(encoding="utf-8") for p in (REPO / "tests").glob("*.py"))
    for req in _requirements():
        name = re.split(r"[<>=!;\[ ]", req, 1)[0].lower()
        module = imports[name]
        assert re.search(rf"^\s*(import|from) {module}\b", sources, flags=re.M), f"{name} is declared but not imported"


# -- the VNN-COMP scripts --------------------------------------------------------------------------
SCRIPTS = ("install_tool.sh", "prepare_instance.sh", "run_instance.sh")


@pytest.mark.parametrize("script", SCRIPTS)
def test_vnncomp_scripts_parse_and_refuse_other_versions(script: str) -> None:
    path = REPO / "vnncomp" / script
    assert os.access(path, os.X_OK), f"{script} is not executable"
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    bad = subprocess.run(["bash", str(path), "v2", *(["x"] * {"install_tool.sh": 0, "prepare_instance.sh": 3,
                                                            "run_instance.sh": 5}[script])],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "v1" in bad.stderr
    assert subprocess.run(["bash", str(path)], capture_output=True, timeout=60).returncode == 1  # usage


def test_install_tool_dry_run_checks_the_installed_tool(tmp_path: Path) -> None:
    """As far as this machine allows (no network, no reinstall): the pip commands it would run,
    then its end-to-end check of what is installed (prepare and run a tiny instance: unsat)."""
    env = {**os.environ, "ROBUSTKIT_PYTHON": sys.executable, "ROBUSTKIT_INSTALL_DRY_RUN": "1", "TMPDIR": str(tmp_path)}
    run = subprocess.run(["bash", str(REPO / "vnncomp" / "install_tool.sh"), "v1"], capture_output=True, text=True,
                         env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "+ " + sys.executable + " -m pip install torch==2.13.0 --index-url" in run.stderr
    assert f"-m pip install -e {REPO}" in run.stderr
    assert "unsat in" in run.stderr and "installed and checked" in run.stdout
    assert not list(tmp_path.glob("tmp.*")), "the check cleans up after itself"
