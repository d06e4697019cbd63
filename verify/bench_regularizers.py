"""Per-step training time of every regularizer relative to ``none``, measured side by side.

Setting: net ``small`` (MNIST 1x28x28), batch 128, CPU, ``torch.set_num_threads(1)``, Adam.
One *step* = clean forward with activations + the regularizer + backward + optimizer step, i.e.
what the trainer does per batch. The regularizers are interleaved round-robin (every round times
each of them for a few steps) so that background load on a shared machine hits all of them
alike; the reported figure is the median over rounds. The row ``jin-rinard, batched (not used)``
times the same loss with the clean batch and both corners in one forward of ``cat([x, x+, x-])``,
the alternative that ``robustkit/regularizers/jin_rinard.py`` rejects (slower on a CPU).

Run from the repository root:  python verify/bench_regularizers.py [--rounds 7] [--steps 5]
Writes the table to verify/results/regularizer_step_time.md and prints it.

Two source trees side by side (this script drives both; the trees' robustkit packages are
imported in turn by subprocesses: per round, each regularizer in one tree then the other, the
order alternating):
    python verify/bench_regularizers.py --tree before=/path/old --tree after=. --rounds 6 --steps 5
writes verify/results/regularizer_step_paired.md: ms per step in each tree and the median over
rounds of the per-round ratio after/before.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from robustkit.nets import NetConfig, build_net, forward_with_activations
from robustkit.regularizers import JinRinard, ScheduleState, build_regularizers
from robustkit.regularizers.jin_rinard import corner_pair, hamming_term, intrinsic_term

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist" / "train-images-idx3-ubyte.gz"
LABELS = ROOT.parent / "shared" / "data" / "mnist" / "train-labels-idx1-ubyte.gz"
OUT = ROOT / "verify" / "results" / "regularizer_step_time.md"
PAIRED = ROOT / "verify" / "results" / "regularizer_step_paired.md"

# the same loss as `jin-rinard`, with the clean batch and both corners in ONE forward of 3B rows:
# measured so that the choice of separate passes (robustkit/regularizers/jin_rinard.py) stays checked
BATCHED = "jin-rinard, batched (not used)"

SPECS = [
    ("none", "none", "-"),
    ("contractive", "contractive", "closed form on the clean pass (no extra pass)"),
    ("relu-stability", "relu-stability", "IBP: 1 interval pass (2 matmuls per layer)"),
    ("intrinsic", "intrinsic", "2 forwards of the batch size (x+, x-)"),
    ("hamming", "hamming", "2 forwards of the batch size (x+, x-), fused tanh-relaxation norm"),
    ("jin-rinard", "jin-rinard", "2 forwards of the batch size (x+, x-) for both terms"),
    (BATCHED, "jin-rinard", "1 forward of cat([x, x+, x-]) (3B) for the clean CE and both terms"),
    ("advprop", "advprop", "1 fwd+bwd to the input, 1 forward (clean CE replaced)"),
    ("mrnet", "mrnet", "1 fwd+bwd to the input, 1 forward"),
    ("mat", "mat", "1 fwd+bwd (power iteration), 1 forward"),
    ("pgd (10 steps)", "pgd", "10 fwd+bwd to the input, 1 forward (clean CE replaced)"),
]


def _batch(batch: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    if MNIST.exists() and LABELS.exists():
        with gzip.open(MNIST, "rb") as f:
            images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)[:batch]
        with gzip.open(LABELS, "rb") as f:
            labels = np.frombuffer(f.read(), np.uint8, offset=8)[:batch]
        x = torch.tensor(images, dtype=torch.float32) / 255
        return x, torch.tensor(labels, dtype=torch.long), "MNIST (first 128 training images)"
    gen = torch.Generator().manual_seed(0)
    return torch.rand(batch, 1, 28, 28, generator=gen), torch.randint(0, 10, (batch,), generator=gen), "random"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per regularizer per round")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--net", default="small", help="zoo net (small, maxpool, resnet, ...)")
    parser.add_argument("--only", default="", help="comma-separated labels to time (default: all)")
    parser.add_argument("--tree", action="append", default=[], help="NAME=PATH: compare two source trees")
    parser.add_argument("--json", default="", help=argparse.SUPPRESS)  # one tree's raw times (paired mode)
    args = parser.parse_args()
    if args.tree:
        paired(args)
        return

    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, y, source = _batch(args.batch)
    # state: past MRnet's warm-up, inside the Jin-Rinard ramp, MNIST eps 0.1
    state = ScheduleState(epoch=30.0, step=0, eps=0.1, total_epochs=100)
    setups = []
    only = {o.strip() for o in args.only.split(",") if o.strip()}
    for label, spec, passes in SPECS:
        if only and label not in only:
            continue
        torch.manual_seed(0)
        net = build_net(NetConfig(args.net, (1, 28, 28)))
        regs = build_regularizers([spec])
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)
        setups.append((label, passes, net, regs, opt))

    def step(net, regs, opt) -> None:  # noqa: ANN001
        # as robustkit/training/loop.py: activations only for regularizers
        clean = forward_with_activations(net, x) if any(getattr(r, "uses_activations", True) for r in regs) else None
        logits = clean.logits if clean is not None else net(x)
        loss, replaced = torch.zeros(()), False
        for reg in regs:
            out = reg(net, x, y, state, clean)
            replaced |= out.replaces_clean_loss
            loss = loss + sum(out.terms.values(), torch.zeros(()))
        if not replaced:
            loss = loss + F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def batched_step(net, regs, opt) -> None:  # noqa: ANN001
        (reg,) = regs
        assert isinstance(reg, JinRinard)
        cfg, n = reg.config, len(x)
        factor = cfg.weight * cfg.ramp(state.epoch, state.total_epochs)
        x_plus, x_minus = corner_pair(x, state.eps, state.input_range)
        acts = forward_with_activations(net, torch.cat([x, x_plus, x_minus], dim=0))
        logits, logits_plus, logits_minus = acts.logits.split(n)
        preacts = [z[n:].chunk(2) for z in acts.preacts]
        loss = F.cross_entropy(logits, y) + factor * (
            cfg.intrinsic_weight * intrinsic_term(logits_plus, logits_minus).mean()
            + cfg.hamming_weight * hamming_term([p for p, _ in preacts], [m for _, m in preacts], cfg.alpha).mean()
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def step_of(label: str):  # noqa: ANN202
        return batched_step if label == BATCHED else step

    for label, _, net, regs, opt in setups:  # warm-up (allocator, kernels)
        for _ in range(2):
            step_of(label)(net, regs, opt)
    times: dict[str, list[float]] = {label: [] for label, *_ in setups}
    for _ in range(args.rounds):
        for label, _, net, regs, opt in setups:
            run = step_of(label)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                run(net, regs, opt)
            times[label].append((time.perf_counter() - t0) / args.steps)

    if args.json:
        Path(args.json).write_text(json.dumps(times))
        return
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    base = statistics.median(times["none"])
    lines = [
        "# Per-step training time of each regularizer relative to `none`",
        "",
        f"Net `small` (Conv16-Conv32-FC100-FC10), batch {args.batch}, input {source}, CPU, "
        f"1 thread, Adam; torch {torch.__version__}, Python {platform.python_version()}, "
        f"{platform.machine()}. One step = clean forward + regularizer + backward + optimizer step. "
        f"Median over {args.rounds} interleaved rounds of {args.steps} steps "
        "(round-robin, so background load on the shared machine affects all rows alike). "
        f"Produced by `python verify/bench_regularizers.py`. {os.cpu_count()} CPU cores, "
        f"1-minute load average {load:.1f} at the end of the run (shared machine: absolute times "
        "are noisy, the ratios less so).",
        "",
        "| regularizer | ms / step | x none | min-max over rounds (ms) | extra work per step |",
        "|---|---:|---:|---:|---|",
    ]
    for label, passes, *_ in setups:
        med = statistics.median(times[label])
        lo, hi = min(times[label]), max(times[label])
        lines.append(f"| {label} | {med * 1e3:.1f} | {med / base:.2f} | {lo * 1e3:.1f}-{hi * 1e3:.1f} | {passes} |")
    text = "\n".join(lines) + "\n"
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(text)


def paired(args: argparse.Namespace) -> None:
    """Alternate the trees round by round; each round one subprocess per tree."""
    trees = [tuple(t.split("=", 1)) for t in args.tree]
    if len(trees) != 2:
        raise SystemExit("--tree NAME=PATH twice")
    times: dict[str, dict[str, list[float]]] = {name: {} for name, _ in trees}
    labels = [label for label, _, _ in SPECS if not args.only or label in args.only.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for k, label in enumerate(labels):  # one regularizer at a time, both trees back to back
                order = trees if (r + k) % 2 == 0 else trees[::-1]
                for name, path in order:
                    out = Path(tmp) / f"{name}{r}_{k}.json"
                    env = dict(os.environ, PYTHONPATH=str(Path(path).resolve()), OMP_NUM_THREADS="1")
                    cmd = [sys.executable, str(Path(__file__).resolve()), "--rounds", "1", "--steps", str(args.steps),
                           "--batch", str(args.batch), "--net", args.net, "--json", str(out), "--only", label]
                    subprocess.run(cmd, check=True, env=env, cwd=Path(path).resolve())
                    for got, ts in json.loads(out.read_text()).items():
                        times[name].setdefault(got, []).extend(ts)
    (a, _), (b, _) = trees
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        f"# Per-step training time, {a} vs {b}, side by side",
        "",
        f"Net `{args.net}`, batch {args.batch}, CPU, 1 thread, Adam; {args.rounds} rounds; in a round each "
        f"regularizer runs {args.steps} steps in one tree and then the other (a fresh process each, the order "
        f"alternating), and the ratio is the median over rounds of {b}/{a} of those back-to-back pairs. Trees: " + ", ".join(f"{n} = `{p}`" for n, p in trees)
        + f". torch {torch.__version__}, {os.cpu_count()} cores, load {load:.1f} at the end. "
        "Produced by `python verify/bench_regularizers.py --tree ... --tree ...`.",
        "",
        f"| regularizer | ms / step ({a}) | ms / step ({b}) | {b} / {a} (median of rounds) | range of ratios |",
        "|---|---:|---:|---:|---:|",
    ]
    for label in times[a]:
        if label not in times[b]:
            continue
        ratios = [tb / ta for ta, tb in zip(times[a][label], times[b][label])]
        lines.append(f"| {label} | {statistics.median(times[a][label]) * 1e3:.1f} | "
                     f"{statistics.median(times[b][label]) * 1e3:.1f} | {statistics.median(ratios):.3f} | "
                     f"{min(ratios):.2f}-{max(ratios):.2f} |")
    text = "\n".join(lines) + "\n"
    PAIRED.parent.mkdir(parents=True, exist_ok=True)
    PAIRED.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
