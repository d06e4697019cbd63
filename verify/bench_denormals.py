"""Training step time with subnormal weights, with and without flushing them to zero, side by side.

Why: with weight decay, weights of units that stop receiving gradient (and Adam's second moments of
their tiny gradients) decay into float32's subnormal range (< 1.18e-38), where x86 CPUs compute
10-100x slower. The zoo's `jin-rinard-h90-i4-wd` run slowed from 15 s to 133 s per epoch that way;
`robustkit train` now sets ``torch.set_flush_denormal(True)`` while it trains.

Setting: net ``small`` (MNIST), batch 50 (the zoo's), Jin & Rinard (gamma_I 4, gamma_H 90, the zoo row
that showed it), Adam with weight decay 5e-4, 1 thread. A fraction of each layer's weights and of
Adam's moments is set to 1e-41, the fractions seen in that run's checkpoint after 4 epochs (conv1
12%, conv2 19%, fc1 7%, fc2 52%). Modes are interleaved round-robin and the subnormal state is
restored before every round; the figure is the median over rounds.

Run from the repository root:  python verify/bench_denormals.py [--rounds 7] [--steps 10]
Writes verify/results/bench_denormals.md and prints it.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from robustkit.nets import NetConfig, build_net, forward_with_activations
from robustkit.regularizers import ScheduleState, build_regularizers

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "verify" / "results" / "bench_denormals.md"
# fraction of subnormal entries per weight tensor, from the checkpoint (epoch 4) of the slowed run
FRACTIONS = {"0.weight": 31 / 256, "2.weight": 1518 / 8192, "5.weight": 11400 / 156800, "7.weight": 515 / 1000}


def _plant(net: torch.nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator) -> None:
    params = dict(net.named_parameters())
    with torch.no_grad():
        for name, frac in FRACTIONS.items():
            p = params[name]
            mask = torch.rand(p.shape, generator=gen) < frac
            p[mask] = 1e-41
            state = opt.state[p]
            state["exp_avg"][mask] = 1e-41
            state["exp_avg_sq"][mask] = 1e-41


def _attack_rows(rounds: int) -> list[str]:
    """The attack's search (input gradients through an exported model) with the subnormals it ships."""
    from robustkit.data import load_dataset
    from robustkit.network import load_onnx

    path = ROOT / "models" / "mnist" / "mnist_small_contractive.onnx"
    module = load_onnx(path).to_torch()
    import numpy as np
    import onnx
    from onnx import numpy_helper

    tiny = np.finfo(np.float32).tiny
    n_sub = sum(int(((a != 0) & (np.abs(a) < tiny)).sum()) for a in map(numpy_helper.to_array, onnx.load(path).graph.initializer)
                if a.dtype == np.float32)
    data = load_dataset("mnist", "test", None).head(200)
    x, y = data.images.float(), data.labels

    def search(steps: int = 50) -> None:
        delta = torch.zeros_like(x, requires_grad=True)
        for _ in range(steps):
            loss = F.cross_entropy(module(x + delta), y)
            (grad,) = torch.autograd.grad(loss, delta)
            delta = (delta + 0.01 * grad.sign()).clamp(-0.1, 0.1).detach().requires_grad_(True)

    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(rounds):
        for flush in (False, True):
            torch.set_flush_denormal(flush)
            t0 = time.perf_counter()
            search()
            times[flush].append(time.perf_counter() - t0)
            torch.set_flush_denormal(False)
    base = statistics.median(times[True])
    rows = ["", f"PGD's search (50 sign-gradient steps on 200 MNIST test images, the embedded subset) through "
            f"`models/mnist/{path.name}`, which ships {n_sub} subnormal weights (the attacks flush inside the "
            "search only; projection, success check and the onnxruntime re-check run unflushed):", "",
            "| mode | s / 50 steps | x flushed | min-max over rounds (s) |", "|---|---:|---:|---:|"]
    for flush, label in ((False, "subnormals kept (torch default)"), (True, "flushed to zero (robustkit attacks)")):
        med = statistics.median(times[flush])
        rows.append(f"| {label} | {med:.2f} | {med / base:.2f} | {min(times[flush]):.2f}-{max(times[flush]):.2f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args()
    if not torch.set_flush_denormal(False):
        raise SystemExit("this CPU cannot flush subnormals (no SSE3): nothing to measure")

    torch.set_num_threads(1)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (args.batch,), generator=gen)
    state = ScheduleState(epoch=5.0, step=0, eps=0.1, total_epochs=20)
    regs = build_regularizers(["jin-rinard:intrinsic_weight=4:hamming_weight=90"])
    net = build_net(NetConfig("small", (1, 28, 28)))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=5e-4)

    def step() -> None:
        clean = forward_with_activations(net, x)
        loss = F.cross_entropy(clean.logits, y)
        for reg in regs:
            loss = loss + sum(reg(net, x, y, state, clean).terms.values(), torch.zeros(()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):  # Adam state exists, kernels warm
        step()
    _plant(net, opt, gen)
    snapshot = (copy.deepcopy(net.state_dict()), copy.deepcopy(opt.state_dict()))
    counts = sum(int(((p != 0) & (p.abs() < torch.finfo(torch.float32).tiny)).sum()) for p in net.parameters())

    times: dict[str, list[float]] = {"subnormals kept (torch default)": [], "flushed to zero (robustkit train)": []}
    for _ in range(args.rounds):
        for label, flush in (("subnormals kept (torch default)", False), ("flushed to zero (robustkit train)", True)):
            net.load_state_dict(snapshot[0])
            opt.load_state_dict(snapshot[1])
            torch.set_flush_denormal(flush)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[label].append((time.perf_counter() - t0) / args.steps)
            torch.set_flush_denormal(False)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    base = statistics.median(times["flushed to zero (robustkit train)"])
    lines = [
        "# Training step time with subnormal weights: kept vs flushed to zero",
        "",
        f"Net `small`, batch {args.batch}, Jin & Rinard (gamma_I 4, gamma_H 90), Adam + weight decay 5e-4, "
        f"1 thread; {counts} weights set to 1e-41 (plus the same entries of Adam's moments) at the fractions "
        "seen in the slowed zoo run. Median over "
        f"{args.rounds} interleaved rounds of {args.steps} steps, state restored before each round; "
        f"torch {torch.__version__}, Python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} cores, load average {load:.1f} at the end. "
        "Produced by `python verify/bench_denormals.py`.",
        "",
        "| mode | ms / step | x flushed | min-max over rounds (ms) |",
        "|---|---:|---:|---:|",
    ]
    for label, ts in times.items():
        med = statistics.median(ts)
        lines.append(f"| {label} | {med * 1e3:.1f} | {med / base:.2f} | {min(ts) * 1e3:.1f}-{max(ts) * 1e3:.1f} |")
    lines += _attack_rows(args.rounds)
    lines += ["", "In the zoo run itself (`python verify/zoo.py train --only jin-rinard-h90-i4-wd`, one thread, "
              "a second training beside it): epochs 2-4 took 96-133 s with subnormals kept; resumed at "
              "epoch 5 with flushing, 19.6 s."]
    text = "\n".join(lines) + "\n"
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
