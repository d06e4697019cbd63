"""What the commands share: the examples of their help, the deprecated file meaning of ``--out``,
and writing the effective configuration and ``run.json`` next to the results."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import typer

from robustkit.config.resolve import CONFIG_FILE, Settings, write_effective
from robustkit.report.run_info import RUN_FILE, record_invocation

_M = "models/mnist/mnist_small_pgd_rs.onnx"
_EX: dict[str, list[str]] = {
    "train": ["robustkit train --dataset mnist --net small --epochs 20 --out runs/mnist-small -r pgd -r relu-stability",
              "robustkit train --config runs/mnist-small/config.toml --out runs/again",
              "robustkit train --out runs/mnist-small --resume --epochs 30",
              "robustkit train --net mypkg.models:make_net --dataset data.npz --mean 0.5 --std 0.25 --out runs/mine"],
    "export": ["robustkit export runs/mnist-small --out mnist_small.onnx"],
    "verify": [f"robustkit verify {_M} --eps 0.1 --n 100 --workers 2",
               f"robustkit verify {_M} --eps 8/255 --method milp --solver cbc --write-milp milps/",
               "robustkit verify --config robustkit-results/<hash>/config.toml   # rerun a saved run",
               "robustkit verify mine.onnx --inputs eval.npz --eps 0.05 --n 200"],
    "attack": [f"robustkit attack {_M} --eps 0.1 --attack-steps 50 --attack-restarts 4 --norm linf"],
    "bounds": [f"robustkit bounds {_M} --eps 0.1 --bounds crown",
               f"robustkit bounds {_M} --eps 0.1 --bounds alpha-crown --format json"],
    "stats": [f"robustkit stats {_M} --eps 0.1 --n 100 --plot stats.png"],
    "vnnlib": ["robustkit vnnlib net.onnx prop.vnnlib --timeout 120 --result out.txt",
               "robustkit vnnlib net.onnx prop.vnnlib --method milp --bounds alpha-crown --out runs/one",
               "robustkit vnnlib net.onnx prop.vnnlib --check"],
    "bench vnncomp": ["robustkit bench vnncomp ../shared/benchmarks/vnncomp/mnist_fc_2022 --filter 256x2 "
                      "--timeout-scale 0.5",
                      "robustkit bench vnncomp --config robustkit-results/vnncomp/<run>/config.toml"],
    "bench soundness": ["robustkit bench soundness", "robustkit bench soundness --method bab --timeout 5 --out runs/s"],
    "table": ["robustkit table models/mnist/*.onnx --eps 0.1 --eps 0.3 --n 100 --format latex",
              "robustkit table --config verify/mnist.toml --columns default,regularizer,n",
              "robustkit table --config verify/mnist.toml --n 200 --timeout 60 --plot acc.png"],
    "regularizers": ["robustkit regularizers", "robustkit regularizers hamming"],
}
#: The examples block of each command's help (``\b``: click keeps its lines as they are).
EXAMPLES: dict[str, str] = {c: "\b\nExamples:\n" + "\n".join(f"  {e}" for e in ex) for c, ex in _EX.items()}


def legacy_file_out(out: Path | None, suffixes: tuple[str, ...], what: str) -> Path | None:
    """``out`` when it names a file the way ``--out`` did before it named the results folder (a
    deprecated spelling, with a warning), else None."""
    if out is None or out.suffix.lower() not in suffixes or out.is_dir():
        return None
    typer.echo(f"warning: --out {out} names {what}, which is deprecated: --out now names the results folder "
               f"(the file meaning goes in the next release)", err=True)
    return out


def finish_run(s: Settings, command: str, folder: Path | None, beside: Path | None,
               extra: Mapping[str, Any] | None = None) -> Path:
    """Write the effective configuration and add this invocation to ``run.json``: into ``folder``
    (as ``config.toml`` and ``run.json``), or, without one, next to the file ``beside``
    (``<file>.config.toml``, ``<file>.run.json``). Returns the configuration's path."""
    if folder is not None:
        config = write_effective(s.replace(out=folder), folder / CONFIG_FILE)
        record_invocation(folder / RUN_FILE, command, {"config": str(config), **(extra or {})})
        return config
    if beside is None:
        raise ValueError("finish_run needs a folder or a file to write beside")
    config = write_effective(s.replace(out=beside), beside.with_name(beside.name + ".config.toml"))
    record_invocation(beside.with_name(beside.name + ".run.json"), command, {"config": str(config), **(extra or {})})
    return config
