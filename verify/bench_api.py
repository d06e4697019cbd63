"""The public API against the command line (issue 35's benchmark), written to verify/results/api.md.

    OMP_NUM_THREADS=1 python verify/bench_api.py                  # both parts
    OMP_NUM_THREADS=1 python verify/bench_api.py --part module    # only part B

A. ``examples/custom_resnet.py`` end to end (its own ResNet class, an .npz made from the shared
   MNIST, the ``intrinsic`` seed regularizer plus ReLU stability, ``rk.verify`` in memory), then the
   same model through the command line: ``robustkit train --net examples.custom_resnet:factory``,
   ``robustkit export``, ``robustkit verify --inputs``; the statuses of every sample are compared.
B. ``rk.verify`` on ``models/mnist/mnist_small_pgd_rs.onnx`` and on its ``nn.Module`` form (the zoo
   ``small`` net holding the file's weights) on the first 200 embedded test images at eps 0.1
   (default method, 2 workers, 60 s per sample): the statuses of every sample are compared.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _run(cmd: list[str], **kw: object) -> tuple[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout, time.perf_counter() - t0


def part_a(out: Path, n: int, workers: int) -> list[str]:
    example = [sys.executable, "examples/custom_resnet.py", "--out", str(out), "--n", str(n), "--workers",
               str(workers), "--timeout", "10"]
    text, t_example = _run(example)
    ex_statuses = text.split("statuses: ")[1].splitlines()[0].split()
    ex_row = next(ln for ln in text.splitlines() if ln.startswith("| SmallResNet"))
    trained = re.search(r"test acc ([\d.]+) \(([\d.]+) s\)", text)
    assert trained is not None
    cli = [sys.executable, "-m", "robustkit.cli.main"]
    run_dir, onnx_path, res = out / "cli-run", out / "cli.onnx", out / "cli-verify"
    for p in (run_dir, res):
        if p.exists():
            import shutil

            shutil.rmtree(p)
    train_cmd = ["train", "--net", "examples.custom_resnet:factory", "--dataset", str(out / "mnist_train.npz"),
                 "--epochs", "2", "--batch-size", "50", "--lr", "2e-3", "--eps", "0.1", "-r", "intrinsic", "-r",
                 "relu-stability=0.001", "--weight-decay", "5e-4", "--n-eval", str(n), "--out", str(run_dir), "--quiet"]
    _, t_train = _run(cli + train_cmd)
    _run(cli + ["export", str(run_dir), "--out", str(onnx_path)])
    verify_cmd = ["verify", str(onnx_path), "--inputs", str(out / "mnist_eval.npz"), "--eps", "0.05", "--n", str(n),
                  "--timeout", "10", "--workers", str(workers), "--out", str(res), "--quiet"]
    text_cli, t_verify = _run(cli + verify_cmd)
    records = sorted((json.loads(ln) for ln in (res / "records.jsonl").read_text().splitlines() if ln.strip()),
                     key=lambda r: r["index"])
    cli_statuses = [r["status"] for r in records]
    cli_row = next(ln for ln in text_cli.splitlines() if ln.startswith("| cli.onnx"))
    same = sum(a == b for a, b in zip(ex_statuses, cli_statuses))
    rel = out.relative_to(REPO) if out.is_relative_to(REPO) else out
    return [
        "## A. The example end to end, and the same model through the command line",
        "",
        f"`OMP_NUM_THREADS=1 python {' '.join(example[1:]).replace(str(out), str(rel))}` (6000 training images, 2 epochs, eps 0.1 "
        f"training, `intrinsic` + `relu-stability=0.001`; verify at eps 0.05, {n} test images, 10 s per sample, "
        f"{workers} workers): {t_example:.1f} s in all, training {float(trained.group(2)):.1f} s, test accuracy "
        f"{float(trained.group(1)):.3f}.",
        "",
        "| run | n | clean % | PGD % | verified % | verified | falsified | misclassified | timeouts | unknown | "
        "errors | mean time (s) | median time (s) | p95 time (s) | mean unstable ReLUs | mean binaries |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ex_row.replace("| SmallResNet", "| example, rk.verify in memory"),
        cli_row.replace("| cli.onnx", "| CLI: train, export, verify --inputs"),
        "",
        "The command line:",
        "",
        "```",
        "robustkit " + " ".join(train_cmd).replace(str(out), str(rel)) + f"    # {t_train:.1f} s",
        f"robustkit export {rel}/cli-run --out {rel}/cli.onnx",
        "robustkit " + " ".join(verify_cmd).replace(str(out), str(rel)) + f"    # {t_verify:.1f} s",
        "```",
        "",
        f"Same status on {same} of {len(ex_statuses)} samples.",
        "",
    ]


def small_from_onnx(path: Path):  # type: ignore[no-untyped-def]
    """The zoo ``small`` net holding the weights of an exported ``small`` model."""
    import onnx
    import torch
    from onnx import numpy_helper
    from torch import nn

    from robustkit.nets import NetConfig, build_net

    proto = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    arrays = [inits[i] for n in proto.graph.node if n.op_type in ("Conv", "Gemm") for i in n.input[1:]]
    net = build_net(NetConfig("small", (1, 28, 28))).eval()
    params = [p for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) for p in (m.weight, m.bias)]
    with torch.no_grad():
        for p, a in zip(params, arrays, strict=True):
            p.copy_(torch.from_numpy(a.copy()))
    return net


def part_b(n: int, workers: int) -> list[str]:
    import torch

    import robustkit as rk
    from robustkit.data import load_dataset

    torch.set_num_threads(1)
    model = REPO / "models" / "mnist" / "mnist_small_pgd_rs.onnx"
    ds = load_dataset("mnist", "test").head(n)
    t0 = time.perf_counter()
    a = rk.verify(model, ds.images, ds.labels, 0.1, workers=workers, timeout=60)
    t_a = time.perf_counter() - t0
    module = small_from_onnx(model)
    t0 = time.perf_counter()
    b = rk.verify(module, ds.images, ds.labels, 0.1, workers=workers, timeout=60)
    t_b = time.perf_counter() - t0
    same = sum(x == y for x, y in zip(a.statuses, b.statuses))
    diff = [f"{i}: {x} vs {y}" for i, (x, y) in enumerate(zip(a.statuses, b.statuses)) if x != y]
    rows = a.table().splitlines()
    return [
        f"## B. rk.verify on the shipped ONNX file and on its nn.Module form ({n} images, eps 0.1)",
        "",
        f"`rk.verify(path, x, y, 0.1, workers={workers}, timeout=60)` with the first {n} embedded MNIST test images, "
        "then the same on the zoo `small` net holding the file's weights (exported in memory by the call): "
        f"{t_a:.1f} s and {t_b:.1f} s.",
        "",
        rows[0].replace("| model", "| model passed"),
        rows[1],
        rows[2].replace("| mnist_small_pgd_rs.onnx", "| models/mnist/mnist_small_pgd_rs.onnx"),
        b.table().splitlines()[2].replace("| Sequential", "| nn.Sequential (zoo small, same weights)"),
        "",
        f"Same status on {same} of {n} samples" + (f"; differing: {', '.join(diff)}." if diff else "."),
        "",
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("all", "example", "module"), default="all")
    ap.add_argument("--n-example", type=int, default=100)
    ap.add_argument("--n-module", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "api-bench")
    ap.add_argument("--result", type=Path, default=REPO / "verify" / "results" / "api.md")
    args = ap.parse_args()
    lines = ["# The public API against the command line", "",
             f"`OMP_NUM_THREADS=1 python verify/bench_api.py` ({os.cpu_count()} cores shared with other runs; "
             "times are wall-clock).", ""]
    old = args.result.read_text() if args.result.is_file() else ""
    sections = {k: ("## " + part).rstrip("\n").split("\n") for part in old.split("\n## ")[1:] for k in "AB"
                if part.startswith(f"{k}. ")}
    sections["A"] = part_a(args.out.resolve(), args.n_example, args.workers) if args.part in ("all", "example") \
        else sections.get("A", []) + [""]
    sections["B"] = part_b(args.n_module, args.workers) if args.part in ("all", "module") \
        else sections.get("B", []) + [""]
    lines += sections["A"] + sections["B"]  # a part not run keeps its section of the existing file
    args.result.write_text("\n".join(lines).rstrip("\n") + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
