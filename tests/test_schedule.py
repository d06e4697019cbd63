"""The order samples go to workers: hardest-first by interval-unstable ReLUs, misclassified last;
and a 2-worker run in that order gives the same per-sample statuses as a 1-worker run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from robustkit.bounds.interval import interval_bounds
from robustkit.bounds.stability import relu_stability, total_unstable
from robustkit.errors import InputError
from robustkit.verification import VerifyConfig
from robustkit.verification.model import ModelContext
from robustkit.verification.run import DatasetChoice, RunOptions, make_tasks, verify_dataset
from robustkit.verification.schedule import estimated_cost, order_tasks

EPS = 0.03


@pytest.fixture(scope="module")
def ctx(tiny_mnist) -> ModelContext:  # type: ignore[no-untyped-def]
    return ModelContext.from_path(tiny_mnist.path)


def test_cost_is_the_interval_unstable_count_and_minus_one_when_misclassified(ctx, tiny_mnist) -> None:  # type: ignore[no-untyped-def]
    x, y = tiny_mnist.images[:40], tiny_mnist.labels[:40]
    cost = estimated_cost(ctx.net, x, y, EPS, (0.0, 1.0))
    xt = torch.as_tensor(x, dtype=torch.float64)
    bounds = interval_bounds(ctx.net, (xt - EPS).clamp(0, 1), (xt + EPS).clamp(0, 1))
    unstable = total_unstable(relu_stability(ctx.net, bounds))
    pred = ctx.net.forward(xt).argmax(1).numpy()
    wrong = pred != y
    assert wrong.any() and (~wrong).any(), "the fixture should have both kinds of sample"
    np.testing.assert_array_equal(cost[wrong], -1.0)
    np.testing.assert_array_equal(cost[~wrong], unstable[~wrong])
    assert cost[~wrong].max() > cost[~wrong].min(), "costs should differ between samples"


def test_hardest_first_is_a_permutation_sorted_by_cost(ctx, tiny_mnist) -> None:  # type: ignore[no-untyped-def]
    x, y = tiny_mnist.images[:40], tiny_mnist.labels[:40]
    tasks = make_tasks(x, y, 0, "mnist", VerifyConfig(eps=EPS), (0.0, 1.0))
    ordered = order_tasks(tasks, ctx.net, EPS, (0.0, 1.0))
    assert sorted(t.key for t in ordered) == sorted(t.key for t in tasks)
    cost = dict(zip((t.key for t in tasks), estimated_cost(ctx.net, x, y, EPS, (0.0, 1.0))))
    seq = [cost[t.key] for t in ordered]
    assert seq == sorted(seq, reverse=True)
    assert seq[-1] == -1.0  # misclassified samples run last
    # ties keep the index order (stable)
    for a, b in zip(ordered, ordered[1:]):
        if cost[a.key] == cost[b.key]:
            assert a.index < b.index
    assert order_tasks(tasks, ctx.net, EPS, (0.0, 1.0), "index") == tasks


def test_unknown_order_is_refused() -> None:
    with pytest.raises(InputError, match="hardest-first"):
        RunOptions(order="random")


def test_two_workers_hardest_first_match_one_worker(tiny_mnist, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = VerifyConfig(eps=EPS, timeout=30, tighten="interval", attack_steps=10, attack_restarts=1)
    choice = DatasetChoice("mnist", 8)
    one = verify_dataset(tiny_mnist.path, cfg, choice, RunOptions(out=tmp_path / "w1.jsonl", workers=1, quiet=True))
    two = verify_dataset(tiny_mnist.path, cfg, choice, RunOptions(out=tmp_path / "w2.jsonl", workers=2, quiet=True))
    assert [r["index"] for r in two.records] == list(range(8))
    assert [r["status"] for r in one.records] == [r["status"] for r in two.records]
    assert one.summary["verified"] + one.summary["falsified"] > 0
