"""Reports: ReLU-stability statistics (exact counts on a hand-built net, Hamming distances and
linear pieces known analytically, agreement with relu_stability), verified-accuracy tables
(against their per-sample records, resumption, every format, LaTeX escaping), TOML benchmark
definitions, plots, and the stats/table commands."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from robustkit.bounds import compute_bounds, relu_stability
from robustkit.cli.main import main
from robustkit.errors import InputError
from robustkit.network import Dense, Network, ReLU, load_onnx
from robustkit.config.benchmark import load_benchmark
from robustkit.report.plots import plot_accuracy, plot_stability
from robustkit.report.stats import (
    StatsConfig,
    corner_hamming,
    distinct_patterns,
    format_stats,
    relu_patterns,
    stability_statistics,
)
from robustkit.report.tables import (
    TABLE_COLUMNS,
    TableConfig,
    build_table,
    format_table,
    latex_escape,
    regularizer_of,
    row_from_records,
)

REPO = Path(__file__).resolve().parents[1]


# -- a hand-built net with known bounds --------------------------------------------------------------
# x in [0, 1]^2. Layer 1 (pre-activations):   n0 = x1 + 1,  n1 = x2 - 1,  n2 = x1 - x2,  n3 = x1 + x2 - 1/2
# Layer 2 (on h = relu(n)):                     m0 = h0 - 1,  m1 = h2 - 1/10,  m2 = -h3
# Output: y0 = m0 + 1, y1 = m2 (class 0 wins everywhere below).
# Sample A = (1/2, 1/2), eps 1/10: n0 in [1.4, 1.6] active, n1 in [-.6, -.4] inactive, n2 in [-.2, .2]
#   unstable, n3 in [.3, .7] active; m0 in [.4, .6] active, m1 in [-.1, .1] unstable, m2 inactive.
#   Inside the box the linear pieces are x1 - x2 < 0, 0 < x1 - x2 < 1/10, x1 - x2 > 1/10: three.
# Sample B = (9/10, 1/10): n2 in [.6, 1] and m1 in [.5, .9] are active too: one linear piece.
def hand_net() -> Network:
    d = torch.tensor
    layers = (
        Dense(d([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0], [1.0, 1.0]]), d([1.0, -1.0, 0.0, -0.5])),
        ReLU(4),
        Dense(d([[1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, -1.0]]), d([-1.0, -0.1, 0.0])),
        ReLU(3),
        Dense(d([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), d([1.0, 0.0])),
    )
    return Network(layers, (2,), (1, 2))


X_HAND = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
Y_HAND = torch.tensor([0, 0])
EPS_HAND = 0.1
# per sample: [(active, inactive, unstable) for layer 1, ... layer 2]
COUNTS_HAND = [[(2, 1, 1), (1, 1, 1)], [(3, 1, 0), (2, 1, 0)]]


@pytest.fixture(scope="module")
def hand_report():  # type: ignore[no-untyped-def]
    cfg = StatsConfig(eps=EPS_HAND, n=2, method="interval", corner_pairs=16, region_samples=128, pgd_steps=10)
    return stability_statistics(hand_net(), X_HAND, Y_HAND, cfg, (0.0, 1.0), "hand")


@pytest.mark.parametrize("method", ["interval", "crown"])
def test_exact_counts_on_hand_built_net(method: str) -> None:
    cfg = StatsConfig(eps=EPS_HAND, n=2, method=method, corner_pairs=2, region_samples=4, pgd_steps=2)
    report = stability_statistics(hand_net(), X_HAND, Y_HAND, cfg)
    for k, layer in enumerate(report.layers):
        for s in range(2):
            assert (int(layer.active[s]), int(layer.inactive[s]), int(layer.unstable[s])) == COUNTS_HAND[s][k]
    summaries = report.layer_summaries()
    assert [s.dim for s in summaries] == [4, 3]
    assert [s.position for s in summaries] == [1, 3]
    assert summaries[0].active_mean == 2.5 and summaries[0].active_median == 2.5
    assert summaries[0].unstable_mean == 0.5 and summaries[1].inactive_median == 1.0
    assert report.unstable_per_sample.tolist() == [2, 0]
    assert report.certified.tolist() == [True, True] and report.correct.all()


def test_hamming_zero_inside_one_linear_region(hand_report) -> None:  # type: ignore[no-untyped-def]
    # sample B: every pre-activation keeps its sign on the box
    assert hand_report.corner_hamming[1].sum() == 0
    assert hand_report.pgd_hamming[1].sum() == 0
    assert hand_report.patterns[1] == 1


def test_hamming_and_pieces_across_the_unstable_neurons(hand_report) -> None:  # type: ignore[no-untyped-def]
    a = hand_report.corner_hamming[0]  # (pairs, layers)
    # opposite corners (x1 +- e, x2 -+ e) differ in n2 and m1; (x1 +- e, x2 +- e) in nothing
    assert set(a.sum(axis=1).tolist()) == {0, 2}
    assert a.max(axis=0).tolist() == [1, 1]
    assert hand_report.patterns[0] == 3
    assert hand_report.totals()["patterns_max"] == 3
    assert hand_report.totals()["single_region_fraction"] == 0.5


def test_relu_patterns_are_pre_activation_signs() -> None:
    pats = relu_patterns(hand_net(), torch.tensor([[0.6, 0.4], [0.4, 0.6], [0.9, 0.1]]))
    # n = (x1 + 1, x2 - 1, x1 - x2, x1 + x2 - 1/2); m = (h0 - 1, h2 - 1/10, -h3)
    assert pats[0].tolist() == [[True, False, True, True], [True, False, False, True], [True, False, True, True]]
    assert pats[1].tolist() == [[True, True, False], [True, False, False], [True, True, False]]


def test_corner_hamming_by_hand() -> None:
    net = hand_net()
    x = X_HAND[:1].double()
    gen = torch.Generator().manual_seed(3)
    got = corner_hamming(net, x, EPS_HAND, (0.0, 1.0), 8, gen)
    gen = torch.Generator().manual_seed(3)
    for p in range(8):  # the same draws, evaluated independently in numpy
        signs = torch.randint(0, 2, x.shape, generator=gen, dtype=torch.int64).numpy()[0] * 2 - 1
        xp, xm = 0.5 + 0.1 * signs, 0.5 - 0.1 * signs
        diff = [(xp[0] - xp[1] > 0) != (xm[0] - xm[1] > 0),
                (max(xp[0] - xp[1], 0) - 0.1 > 0) != (max(xm[0] - xm[1], 0) - 0.1 > 0)]
        assert got[0, p].tolist() == [int(d) for d in diff]


def test_corners_are_clipped_to_the_valid_range() -> None:
    # x = (0, 0), eps 1/10, valid range [0, 1/20]: the clipped box is [0, 1/20]^2. Opposite clipped corners
    # always differ in m0 = x1 (0 vs 1/20) and never in m1 = relu(x1 - x2) - 1/10 <= -1/20. Without
    # clipping, the pair (1/10, -1/10) / (-1/10, 1/10) would also differ in m1 (relu(.2) - .1 > 0).
    net = hand_net()
    x = torch.zeros(1, 2, dtype=torch.float64)
    got = corner_hamming(net, x, EPS_HAND, (0.0, 0.05), 32, torch.Generator().manual_seed(0))
    assert got[0, :, 1].tolist() == [1] * 32
    assert set(got[0, :, 0].tolist()) == {0, 1}  # n2 = x1 - x2 flips between (1/20, 0) and (0, 1/20) only
    unclipped = corner_hamming(net, x, EPS_HAND, (-1.0, 1.0), 32, torch.Generator().manual_seed(0))
    assert set(unclipped[0, :, 1].tolist()) == {1, 2}


def test_distinct_patterns_counts_pieces() -> None:
    net = hand_net()
    gen = torch.Generator().manual_seed(0)
    got = distinct_patterns(net, X_HAND.double(), EPS_HAND, (0.0, 1.0), 256, gen)
    assert got.tolist() == [3, 1]
    assert distinct_patterns(net, X_HAND.double(), 0.0, (0.0, 1.0), 16, gen).tolist() == [1, 1]


# -- a trained net: agreement with relu_stability, Hamming <= unstable ---------------------------------
@pytest.fixture(scope="module")
def tiny_report(tiny_mnist):  # type: ignore[no-untyped-def]
    net = load_onnx(tiny_mnist.path)
    cfg = StatsConfig(eps=0.03, n=24, method="crown", corner_pairs=4, region_samples=16, pgd_steps=10, batch_size=10)
    x = torch.from_numpy(tiny_mnist.images[:24])
    y = torch.from_numpy(tiny_mnist.labels[:24])
    return net, x, stability_statistics(net, x, y, cfg, (0.0, 1.0), "tiny")


def test_stats_agree_with_relu_stability(tiny_report) -> None:  # type: ignore[no-untyped-def]
    net, x, report = tiny_report
    xd = x.double()
    bounds, _ = compute_bounds(net, (xd - 0.03).clamp(0, 1), (xd + 0.03).clamp(0, 1), "crown")
    expected = relu_stability(net, bounds)
    assert len(expected) == len(report.layers) == 2
    for exp, got, summ in zip(expected, report.layers, report.layer_summaries()):
        for name in ("active", "inactive", "unstable"):
            np.testing.assert_array_equal(getattr(got, name), getattr(exp, name))
        assert summ.unstable_mean == pytest.approx(float(np.mean(exp.unstable)))
        assert summ.unstable_median == pytest.approx(float(np.median(exp.unstable)))
        assert summ.active_mean == pytest.approx(float(np.mean(exp.active)))
        np.testing.assert_array_equal(exp.active + exp.inactive + exp.unstable, exp.dim)
    assert report.unstable_per_sample.sum() > 0  # the test means something


def test_empirical_hamming_never_exceeds_unstable(tiny_report) -> None:  # type: ignore[no-untyped-def]
    _, _, report = tiny_report
    unstable = np.stack([layer.unstable for layer in report.layers], axis=1)  # (n, layers)
    assert (report.corner_hamming.max(axis=1) <= unstable).all()
    assert (report.pgd_hamming <= unstable).all()
    assert ((report.patterns >= 1) & (report.patterns <= 16)).all()
    stable = report.unstable_per_sample == 0
    assert (report.patterns[stable] == 1).all()
    assert report.corner_hamming.sum() > 0


def test_stats_formats(tiny_report) -> None:  # type: ignore[no-untyped-def]
    _, _, report = tiny_report
    data = json.loads(format_stats(report, "json"))
    assert data["n"] == 24 and len(data["layers"]) == 2
    assert data["layers"][0]["unstable_mean"] == pytest.approx(float(report.layers[0].unstable.mean()))
    assert data["totals"]["unstable_mean"] == pytest.approx(float(report.unstable_per_sample.mean()))
    md = format_stats(report, "md")
    assert f"{report.layers[1].unstable.mean():.2f}" in md
    with pytest.raises(InputError):
        format_stats(report, "xml")


def test_stats_config_validation() -> None:
    with pytest.raises(InputError):
        StatsConfig(eps=-0.1)
    with pytest.raises(InputError):
        StatsConfig(eps=0.1, method="magic")
    with pytest.raises(InputError):
        StatsConfig(eps=0.1, n=0)
    assert StatsConfig(eps=0.1, method="ibp").method == "interval"


# -- tables --------------------------------------------------------------------------------------
def _rec(i: int, status: str, stage: str, time: float, unstable: list[int] | None = None) -> dict:
    r = {"key": f"mnist:{i}", "index": i, "status": status, "stage": stage, "time": time}
    if unstable is not None:
        r["unstable_per_layer"] = unstable
    return r


def test_row_from_records_by_hand() -> None:
    records = [
        _rec(0, "verified", "bounds", 1.0, [1, 0]), _rec(1, "verified", "bounds", 2.0, [2, 1]),
        _rec(2, "verified", "milp", 6.0, [5, 3]), _rec(3, "falsified", "attack", 0.5),
        _rec(4, "falsified", "milp", 9.0, [7, 1]), _rec(5, "timeout", "milp", 30.0, [9, 9]),
        _rec(6, "misclassified", "clean", 0.01), _rec(7, "unknown", "milp", 3.0, [4, 0]),
    ]
    row = row_from_records("m.onnx", "pgd", 0.1, records)
    assert row.n == 8
    assert row.clean_accuracy == pytest.approx(100 * 7 / 8)
    assert row.pgd_accuracy == pytest.approx(100 * 6 / 8)  # only the attack's falsification counts
    assert row.verified_accuracy == pytest.approx(100 * 3 / 8)
    assert row.bounds_verified == 2 and row.bounds_verified_accuracy == pytest.approx(25.0)
    assert (row.falsified, row.timeout, row.unknown, row.misclassified) == (2, 1, 1, 1)
    times = [1.0, 2.0, 6.0, 0.5, 9.0, 30.0, 3.0]
    assert row.mean_time == pytest.approx(np.mean(times)) and row.median_time == pytest.approx(np.median(times))
    assert row.mean_unstable_relus == pytest.approx(np.mean([1, 3, 8, 8, 18, 4]))
    assert row.p95_time == pytest.approx(np.percentile(times, 95))
    assert row.unstable_per_layer == f"{np.mean([1, 2, 5, 7, 9, 4]):.1f} / {np.mean([0, 1, 3, 1, 9, 0]):.1f}"
    assert "p95 time (s)" in format_table([row], "md") and "unstable/layer" in format_table([row], "md")
    # no record reached the bounds stage: the mean is missing, not zero
    only_attack = row_from_records("m.onnx", "pgd", 0.1, [_rec(0, "falsified", "attack", 0.1)])
    assert only_attack.mean_unstable_relus is None and only_attack.unstable_per_layer is None
    assert "| - |" in format_table([only_attack], "md") and json.loads(format_table([only_attack], "json"))[0][
        "mean_unstable_relus"] is None


def test_regularizer_from_metadata() -> None:
    assert regularizer_of({}) == "-"
    assert regularizer_of({"robustkit.train_config": json.dumps({"regularizers": []})}) == "none"
    assert regularizer_of({"robustkit.train_config": json.dumps({"regularizers": ["pgd:steps=5", "relu-stability=0.002"]})}) \
        == "pgd:steps=5+relu-stability=0.002"
    zoo = REPO / "models" / "mnist" / "mnist_small_mrnet.onnx"
    if zoo.is_file():
        from robustkit.onnx_export import read_metadata

        assert regularizer_of(read_metadata(zoo)) == "mrnet"
    assert regularizer_of({"robustkit.train_config": json.dumps({"regularizers": ["jin-rinard"], "weight_decay": 5e-4})}) \
        == "jin-rinard (weight decay 0.0005)"
    assert regularizer_of({"robustkit.train_config": json.dumps({"regularizers": [], "weight_decay": 0.0})}) == "none"


def _read_records(path: str) -> list[dict]:
    out: dict[str, dict] = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            out[r["key"]] = r
    return list(out.values())


@pytest.fixture(scope="module")
def table_run(tiny_mnist, tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("table")
    cfg = TableConfig(models=(tiny_mnist.path,), eps=(0.02, 0.06), n=8, timeout=20, attack_steps=10,
                      attack_restarts=1, workers=0, results_root=root / "results")
    return cfg, build_table(cfg)


def test_table_equals_recomputation_from_records(table_run) -> None:  # type: ignore[no-untyped-def]
    _, rows = table_run
    assert [(r.model, r.eps) for r in rows] == [("tiny_mlp.onnx", 0.02), ("tiny_mlp.onnx", 0.06)]
    for row in rows:
        recs = _read_records(row.records)
        assert len(recs) == row.n == 8
        assert {r["eps"] for r in recs} == {row.eps}
        status = [r["status"] for r in recs]
        clean = sum(s != "misclassified" for s in status)
        attack = sum(r["status"] == "falsified" and r["stage"] == "attack" for r in recs)
        assert row.clean_accuracy == pytest.approx(100 * clean / 8)
        assert row.pgd_accuracy == pytest.approx(100 * (clean - attack) / 8)
        assert row.verified == status.count("verified")
        assert row.verified_accuracy == pytest.approx(100 * status.count("verified") / 8)
        assert row.bounds_verified == sum(r["status"] == "verified" and r["stage"] == "bounds" for r in recs)
        assert (row.falsified, row.timeout) == (status.count("falsified"), status.count("timeout"))
        times = [r["time"] for r in recs if r["status"] != "misclassified"]
        assert row.mean_time == pytest.approx(float(np.mean(times)))
        assert row.median_time == pytest.approx(float(np.median(times)))
        assert row.p95_time == pytest.approx(float(np.percentile(times, 95)))
        unstable = [sum(r["unstable_per_layer"]) for r in recs if "unstable_per_layer" in r]
        assert row.mean_unstable_relus == (pytest.approx(float(np.mean(unstable))) if unstable else None)
        assert row.regularizer == "-"  # the test model carries no training metadata
    assert rows[0].verified >= rows[1].verified  # a larger box is never easier
    assert rows[0].verified > 0


def test_table_resumes_without_new_work(table_run) -> None:  # type: ignore[no-untyped-def]
    cfg, rows = table_run
    sizes = [Path(r.records).stat().st_size for r in rows]
    again = build_table(cfg)
    assert [Path(r.records).stat().st_size for r in again] == sizes
    assert [r.to_dict() for r in again] == [r.to_dict() for r in rows]


def _md_cells(text: str) -> list[list[str]]:
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines[2:]]


def _latex_cells(text: str) -> list[list[str]]:
    body = text.split(r"\midrule")[1].split(r"\bottomrule")[0]
    return [[c.strip() for c in ln.rstrip().removesuffix(r"\\").split(" & ")] for ln in body.strip().splitlines()]


def test_all_formats_carry_the_same_numbers(table_run) -> None:  # type: ignore[no-untyped-def]
    _, rows = table_run
    data = json.loads(format_table(rows, "json"))
    parsed_csv = list(csv.DictReader(io.StringIO(format_table(rows, "csv"))))
    md = _md_cells(format_table(rows, "md"))
    tex = _latex_cells(format_table(rows, "latex"))
    assert len(data) == len(parsed_csv) == len(md) == len(tex) == len(rows)
    for j, (key, _, fmt) in enumerate(TABLE_COLUMNS):
        for i, row in enumerate(data):
            value = row[key]
            assert value == getattr(rows[i], key)
            if value is None:
                assert parsed_csv[i][key] == "" and md[i][j] == tex[i][j] == "-"
                continue
            if isinstance(value, str):
                assert parsed_csv[i][key] == md[i][j] == value
                assert tex[i][j] == latex_escape(value)
                continue
            assert float(parsed_csv[i][key]) == pytest.approx(value, rel=1e-12, abs=1e-12)
            assert md[i][j] == tex[i][j] == fmt.format(value)
            assert float(md[i][j]) == pytest.approx(value, abs=0.051 if "." in md[i][j] else 1e-9)


def test_latex_escapes_special_characters() -> None:
    assert latex_escape("a_b%c&d#e$f{g}h~i^j\\k") == \
        r"a\_b\%c\&d\#e\$f\{g\}h\textasciitilde{}i\textasciicircum{}j\textbackslash{}k"
    row = row_from_records("net_v2 50%&co.onnx", "pgd:steps=5+relu_stab", 0.1, [_rec(0, "verified", "bounds", 1.0)])
    tex = format_table([row], "latex")
    assert r"net\_v2 50\%\&co.onnx" in tex and r"relu\_stab" in tex
    assert r"clean \%" in tex
    # no unescaped specials outside the LaTeX commands themselves
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0].replace(r"\\", "")
    assert not re.search(r"(?<!\\)[_%&#$]", body.replace(" & ", " "))


def test_csv_parses_with_quoting() -> None:
    row = row_from_records('odd, "name".onnx', "a,b", 0.3, [_rec(0, "timeout", "milp", 5.0, [3])])
    parsed = list(csv.DictReader(io.StringIO(format_table([row], "csv"))))
    assert parsed[0]["model"] == 'odd, "name".onnx' and parsed[0]["regularizer"] == "a,b"
    assert int(parsed[0]["timeout"]) == 1 and float(parsed[0]["eps"]) == 0.3


def test_table_config_validation(tiny_mnist, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match="not found"):
        TableConfig(models=(tmp_path / "missing.onnx",), eps=(0.1,))
    with pytest.raises(InputError, match="eps"):
        TableConfig(models=(tiny_mnist.path,), eps=())
    with pytest.raises(InputError):
        format_table([], "xml")


# -- benchmark definitions -------------------------------------------------------------------------
def test_benchmark_toml(tiny_mnist, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    models = tmp_path / "m"
    models.mkdir()
    for name in ("a.onnx", "b.onnx"):
        (models / name).write_bytes(tiny_mnist.path.read_bytes())
    cfg_file = tmp_path / "bench.toml"
    cfg_file.write_text('name = "t"\nmodels = ["m/*.onnx"]\neps = [0.1, "2/255"]\nn = 3\ntimeout = 5\n'
                        'results_root = "res"\n[verify]\ntighten = "interval"\nattack_steps = 7\n'
                        '[output]\nformat = "latex"\ntable = "out/t.tex"\n')
    bench = load_benchmark(cfg_file)
    t = bench.table
    assert [m.name for m in t.models] == ["a.onnx", "b.onnx"]
    assert t.eps == (0.1, 2 / 255) and t.n == 3 and t.timeout == 5.0
    assert t.tighten == "interval" and t.attack_steps == 7 and t.method == "bab"  # the one default of --method
    assert t.results_root == tmp_path / "res" and bench.table_out == tmp_path / "out" / "t.tex"
    assert bench.fmt == "latex" and bench.plot is None and bench.name == "t"


@pytest.mark.parametrize("text, message", [
    ('models = ["m/*.onnx"]\neps = [0.1]\nn_samples = 3\n', "unknown key"),
    ('eps = [0.1]\n', "missing required key 'models'"),
    ('models = ["nothing/*.onnx"]\neps = [0.1]\n', "matches no file"),
    ('models = ["m/a.onnx"]\neps = [-1]\n', "negative"),
    ('models = ["m/a.onnx"]\neps = [0.1]\nn = "ten"\n', "integer"),
    ('models = ["m/a.onnx"]\neps = [0.1]\n[verify]\ntighten = "magic"\n', "tightening"),
    ('models = ["m/a.onnx"]\neps = [0.1]\n[output]\nformat = "xml"\n', "format"),
    ('models = ["m/a.onnx"\n', "not valid TOML"),
])
def test_benchmark_toml_errors(tiny_mnist, tmp_path: Path, text: str, message: str) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a.onnx").write_bytes(tiny_mnist.path.read_bytes())
    (tmp_path / "b.toml").write_text(text)
    with pytest.raises(InputError, match=message):
        load_benchmark(tmp_path / "b.toml")


def test_repository_benchmark_definition() -> None:
    bench = load_benchmark(REPO / "verify" / "mnist.toml")
    assert bench.table.eps == (0.1, 0.3) and bench.table.n <= 100
    assert {m.name for m in bench.table.models} >= {"mnist_small_none.onnx", "mnist_small_pgd_rs.onnx"}


# -- plots ---------------------------------------------------------------------------------------
def _image(path: Path) -> np.ndarray:
    import matplotlib.image as mpimg

    assert path.is_file() and path.stat().st_size > 1000
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert float(img[..., :3].std()) > 0.01  # not a blank canvas
    return img


def test_plots_are_written(table_run, hand_report, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, rows = table_run
    _image(plot_accuracy(rows, tmp_path / "multi.png"))
    _image(plot_accuracy(rows[:1], tmp_path / "single.png"))
    _image(plot_stability(hand_report, tmp_path / "stats.png"))
    assert (plot_stability(hand_report, tmp_path / "stats.svg")).read_text().lstrip().startswith("<?xml")
    with pytest.raises(InputError, match="must end in"):
        plot_accuracy(rows, tmp_path / "acc.jpg")
    with pytest.raises(InputError):
        plot_accuracy([], tmp_path / "none.png")


# -- the commands --------------------------------------------------------------------------------
def test_table_command_from_config(table_run, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    cfg, rows = table_run
    toml = tmp_path / "b.toml"
    toml.write_text(f'models = ["{cfg.models[0]}"]\neps = [0.02, 0.06]\nn = 8\ntimeout = 20\nworkers = 0\n'
                    f'results_root = "{cfg.results_root}"\n[verify]\nattack_steps = 10\nattack_restarts = 1\n')
    code = main(["table", "--config", str(toml), "--format", "csv", "--quiet", "--plot", str(tmp_path / "acc.png"),
                 "--out", str(tmp_path / "t.csv")])
    out = capsys.readouterr().out
    assert code == 0
    parsed = list(csv.DictReader(io.StringIO(out)))
    assert [float(p["verified_accuracy"]) for p in parsed] == pytest.approx([r.verified_accuracy for r in rows])
    assert (tmp_path / "t.csv").read_text() == out
    _image(tmp_path / "acc.png")


def test_stats_command(tiny_mnist, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    code = main(["stats", str(tiny_mnist.path), "--eps", "0.03", "--n", "5", "--method", "interval",
                 "--region-samples", "4", "--pgd-steps", "3", "--format", "json", "--plot", str(tmp_path / "s.png")])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["n"] == 5 and data["method"] == "interval" and len(data["unstable_per_sample"]) == 5
    _image(tmp_path / "s.png")


@pytest.mark.parametrize("args", [
    ["table", "--eps", "0.1"],
    ["table", "MODEL", "--eps", "0.1", "--format", "xml"],
    ["table", "MODEL"],
    ["table", "MODEL", "--eps", "0.1", "--plot", "x.jpg"],
    ["stats", "MODEL", "--eps", "0.1", "--format", "xml"],
    ["stats", "MODEL", "--eps", "-1"],
    ["stats", "MODEL", "--eps", "0.1", "--plot", "x.gif"],
])
def test_commands_reject_bad_input(tiny_mnist, args: list[str], capsys) -> None:  # type: ignore[no-untyped-def]
    code = main([str(tiny_mnist.path) if a == "MODEL" else a for a in args])
    assert code == 1
    assert "error" in capsys.readouterr().err.lower()
