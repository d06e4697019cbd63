"""Branch and bound over the input box (``bab_split="input"``): agrees with the MILP, its
witnesses violate, its closed boxes cover the input box, and it stops where it must."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from robustkit.bounds.crown import crown_bounds
from robustkit.errors import InputError
from robustkit.network import Dense, Network, ReLU
from robustkit.spec import InputBox, robustness_spec
from robustkit.verification import ModelContext, VerifyConfig, verify_spec
from robustkit.verification.input_split import InputSplitConfig, _Boxes, _InputSearch, input_split


def _net(seed: int, sizes: tuple[int, ...]) -> Network:
    rng = np.random.default_rng(seed)
    layers: list = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(Dense(torch.from_numpy(rng.normal(size=(b, a)) / np.sqrt(a)),
                            torch.from_numpy(rng.normal(size=b) * 0.2)))
        if i < len(sizes) - 2:
            layers.append(ReLU(b))
    return Network(tuple(layers), (sizes[0],), (1, sizes[0]))


@pytest.mark.parametrize("seed", range(10))
def test_input_split_agrees_with_the_milp(seed: int, onnx_kit, save_onnx) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    sizes = (3, 10, 10, 3)
    mats = [((rng.normal(size=(b, a)) / np.sqrt(a)).astype(np.float32), (rng.normal(size=b) * 0.2).astype(np.float32))
            for a, b in zip(sizes[:-1], sizes[1:])]
    ctx = ModelContext.from_path(save_onnx(onnx_kit.mlp_model(mats), f"net{seed}.onnx"))
    x0 = rng.uniform(0.3, 0.7, size=3)
    label = int(np.argmax(ctx.net.forward(torch.from_numpy(x0[None])).reshape(-1).numpy()))
    answers = []
    for eps in (0.05, 0.15, 0.3):
        box = InputBox(np.clip(x0 - eps, 0, 1), np.clip(x0 + eps, 0, 1))
        spec = robustness_spec(label, 3, box)
        milp = verify_spec(ctx, spec, VerifyConfig(method="milp", attack_steps=0, tighten="interval", timeout=60))
        split = verify_spec(ctx, spec, VerifyConfig(method="bab", bab_split="input", attack_steps=0,
                                                    tighten="interval", timeout=60))
        assert milp.result in ("sat", "unsat")
        assert split.result == milp.result, (seed, eps, milp.result, split.result)
        if split.result == "sat":
            w = split.witness
            assert w is not None and box.contains(w.x.astype(np.float64))
            assert spec.is_violated_by(w.x.astype(np.float64), w.y)
        if split.stage == "bab":
            assert split.details["bab"]["split"] == "input"
        answers.append(split.result)
    assert set(answers) <= {"sat", "unsat"}


def _property(net: Network, seed: int, eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x0 = np.random.default_rng(seed + 100).uniform(-0.5, 0.5, size=net.in_dim)
    y0 = net.forward(torch.from_numpy(x0[None])).reshape(-1)
    label = int(y0.argmax())
    other = [k for k in range(net.out_dim) if k != label]
    C = np.zeros((len(other), net.out_dim))
    for i, k in enumerate(other):  # row i: y_label - y_k; violated where <= 0
        C[i, label], C[i, k] = 1.0, -1.0
    return x0 - eps, x0 + eps, C, np.zeros(len(other))


@pytest.mark.parametrize("seed,iterations,bounds", [(0, 0, "crown"), (1, 0, "crown"), (2, 0, "crown"), (0, 5, "crown"),
                                                   (1, 5, "crown"), (0, 0, "symbolic"), (1, 0, "symbolic"),
                                                   (2, 0, "symbolic")])
def test_closed_boxes_hold_their_points_and_halves_cover_the_box(seed: int, iterations: int, bounds: str) -> None:
    """Every box the search closes has no sampled point violating (its bound is sound), and the
    two halves of a split box cover it exactly (both keep the midpoint)."""
    net = _net(seed, (4, 16, 16, 3))
    lo, hi, C, d = _property(net, seed, 0.3)
    lo_t, hi_t = torch.from_numpy(lo)[None], torch.from_numpy(hi)[None]
    root, _ = crown_bounds(net, lo_t, hi_t)
    owner = np.arange(C.shape[0])  # one disjunct per row
    search = _InputSearch(net, lo_t, hi_t, C, d, owner, 1e-4, InputSplitConfig(iterations=iterations, bounds=bounds),
                          lambda x: None, float("inf"), root)
    plain = _InputSearch(net, lo_t, hi_t, C, d, owner, 1e-4, InputSplitConfig(bounds=bounds), lambda x: None,
                         float("inf"), root)
    boxes = _Boxes(lo_t, hi_t, torch.zeros(1, dtype=torch.long))
    rng = np.random.default_rng(seed)
    closed_seen = 0
    for _ in range(6):
        b = search.bound(boxes)
        measure = b.measure
        assert bool((measure <= plain.bound(boxes).measure + 1e-12).all())  # the slopes' steps only tighten
        for i in range(len(boxes)):
            pts = torch.from_numpy(rng.uniform(boxes.lo[i].numpy(), boxes.hi[i].numpy(), size=(500, net.in_dim)))
            gap = torch.from_numpy(d) - net.forward(pts) @ torch.from_numpy(C).T  # >= 0: row violated
            point_measure = gap.max(dim=1).values  # one-row disjuncts: violated by any row
            assert bool((point_measure <= measure[i] + 1e-9).all()), (seed, i)
            closed_seen += int(measure[i] < -1e-4)
        halves, stuck = search.split(boxes, b)
        assert stuck == 0
        n = len(boxes)
        left, right = halves.take(slice(0, n)), halves.take(slice(n, 2 * n))
        assert torch.equal(left.lo, boxes.lo) and torch.equal(right.hi, boxes.hi)
        changed = left.hi != boxes.hi
        assert bool((changed.sum(dim=1) == 1).all())  # one dimension halved per box
        assert torch.equal(left.hi[changed], right.lo[changed])  # the midpoint, in both halves
        assert bool((halves.depth == boxes.depth.repeat(2) + 1).all())
        boxes = halves
    assert closed_seen > 0


def test_input_split_proves_what_sampling_cannot_break_and_finds_a_witness() -> None:
    net = _net(7, (2, 12, 12, 2))
    found = {}
    for eps in (0.05, 1.5):
        lo, hi, C, d = _property(net, 7, eps)
        root, _ = crown_bounds(net, torch.from_numpy(lo)[None], torch.from_numpy(hi)[None])

        def check(x: np.ndarray, C=C, d=d, lo=lo, hi=hi) -> np.ndarray | None:  # type: ignore[no-untyped-def]
            assert (x >= lo - 1e-12).all() and (x <= hi + 1e-12).all()
            y = net.forward(torch.from_numpy(x[None])).reshape(-1).numpy()
            return x if (C @ y <= d).any() else None

        res = input_split(net, lo, hi, C, d, np.arange(C.shape[0]), root, time.perf_counter() + 30, check)
        found[eps] = res
        pts = np.random.default_rng(0).uniform(lo, hi, size=(20000, 2))
        y = net.forward(torch.from_numpy(pts)).numpy()
        sampled_violation = bool(((y @ C.T) <= d).any())
        if res.status == "unsat":
            assert not sampled_violation
        else:
            assert res.status == "sat" and res.witness is not None
    assert found[0.05].status == "unsat" and found[1.5].status == "sat", {k: v.status for k, v in found.items()}
    assert found[0.05].stats["split"] == "input" and found[0.05].stats["cleared"] > 0


def test_input_split_times_out_and_reports_what_is_open() -> None:
    net = _net(3, (6, 40, 40, 3))
    lo, hi, C, d = _property(net, 3, 2.0)
    root, _ = crown_bounds(net, torch.from_numpy(lo)[None], torch.from_numpy(hi)[None])
    res = input_split(net, lo, hi, C, d - 50.0, np.arange(C.shape[0]), root, time.perf_counter() + 0.5,
                      lambda x: None)
    # d - 50: violated nowhere the net reaches, but far from provable over so wide a box in 0.5 s
    assert res.status in ("timeout", "unsat")
    if res.status == "timeout":
        assert 0 < res.stats["open_share"] <= 1.0 and res.stats["open"] > 0


def test_bab_split_is_validated_and_kept_in_the_settings() -> None:
    with pytest.raises(InputError, match="--bab-split"):
        VerifyConfig(method="bab", bab_split="neurons")
    with pytest.raises(ValueError):
        InputSplitConfig(min_width=0.0)
    assert "bab_split" not in VerifyConfig().to_dict()
    assert VerifyConfig(bab_split="input").to_dict()["bab_split"] == "input"
    assert VerifyConfig(bab_split="relu").to_dict()["bab_split"] == "relu"


def test_auto_split_follows_the_input_dimension(onnx_kit, save_onnx) -> None:  # type: ignore[no-untyped-def]
    """``auto`` splits the input box of a 3-input net (stats say ``split: input``) and ReLUs of an
    11-input one; ``relu`` forces ReLU splits on the 3-input net."""
    from robustkit.verification.input_split import AUTO_MAX_DIM

    rng = np.random.default_rng(4)
    seen = {}
    for dim in (3, AUTO_MAX_DIM + 1):
        sizes = (dim, 12, 12, 3)
        mats = [((rng.normal(size=(b, a)) / np.sqrt(a)).astype(np.float32), (rng.normal(size=b) * 0.2).astype(np.float32))
                for a, b in zip(sizes[:-1], sizes[1:])]
        ctx = ModelContext.from_path(save_onnx(onnx_kit.mlp_model(mats), f"dim{dim}.onnx"))
        x0 = rng.uniform(0.3, 0.7, size=dim)
        label = int(np.argmax(ctx.net.forward(torch.from_numpy(x0[None])).reshape(-1).numpy()))
        for eps in (0.05, 0.1, 0.2, 0.3):  # the first radius the bounds alone leave open
            spec = robustness_spec(label, 3, InputBox(np.clip(x0 - eps, 0, 1), np.clip(x0 + eps, 0, 1)))
            runs = {split: verify_spec(ctx, spec, VerifyConfig(method="bab", bab_split=split, attack_steps=0,
                                                               tighten="interval", timeout=30))
                    for split in ("auto", "relu")}
            if runs["auto"].stage == "bab":
                break
        assert runs["auto"].stage == "bab" and runs["relu"].stage == "bab", dim
        assert runs["auto"].result == runs["relu"].result
        seen[dim] = (runs["auto"].details["bab"].get("split"), runs["relu"].details["bab"].get("split"))
    assert seen[3] == ("input", None) and seen[AUTO_MAX_DIM + 1] == (None, None), seen
