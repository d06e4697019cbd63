"""Outputs for a paper: eps as given, Wilson intervals, chosen columns, booktabs LaTeX, figures in
a colour-blind-safe palette with markers and a caption, and what ``run.json`` records."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from robustkit.errors import InputError
from robustkit.numbers import format_eps, parse_eps
from robustkit.report.intervals import wilson_interval
from robustkit.report.plots import LINE_COLOURS, MARKERS, OKABE_ITO, model_style, plot_accuracy
from robustkit.report.run_info import environment, record_invocation
from robustkit.report.tables import (
    COLUMN_KEYS, DEFAULT_COLUMNS, format_table, parse_columns, row_from_records, table_caption,
)


@pytest.mark.parametrize("text, shown", [
    ("8/255", "8/255"), ("2/255", "2/255"), ("1/255", "1/255"), ("0.1", "0.1"), ("0.3", "0.3"), ("0", "0"),
    ("0.0313725", "0.0313725"), ("1/3", "1/3"), ("2e-3", "0.002"), ("0.123456789", "0.123456789"),
])
def test_eps_is_printed_as_given(text: str, shown: str) -> None:
    assert format_eps(parse_eps(text)) == shown
    assert parse_eps(format_eps(parse_eps(text))) == parse_eps(text)  # always reads back exactly


@pytest.mark.parametrize("k, n, low, high", [
    (5, 10, 23.659309, 76.340691), (0, 10, 0.0, 27.753279), (10, 10, 72.246721, 100.0),
    (91, 100, 83.773787, 95.192746), (0, 0, 0.0, 100.0),
])
def test_wilson_interval_known_values(k: int, n: int, low: float, high: float) -> None:
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-5) and hi == pytest.approx(high, abs=1e-5)


def test_wilson_interval_contains_the_estimate_and_narrows_with_n() -> None:
    widths = []
    for n in (20, 80, 320):
        for k in range(0, n + 1, n // 10):
            lo, hi = wilson_interval(k, n)
            assert 0 <= lo <= 100 * k / n <= hi <= 100
        lo, hi = wilson_interval(n // 2, n)
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    # the normal approximation's width at p = 1/2 for large n
    assert widths[2] == pytest.approx(2 * 196 * math.sqrt(0.25 / 320), rel=0.01)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def _rec(i: int, status: str, stage: str) -> dict:
    return {"key": f"mnist:{i}", "index": i, "status": status, "stage": stage, "time": 0.5 + i}


def _rows() -> list:
    recs = [_rec(0, "verified", "bounds"), _rec(1, "verified", "bab"), _rec(2, "falsified", "attack"),
            _rec(3, "timeout", "bab"), _rec(4, "misclassified", "clean")]
    return [row_from_records("net_a.onnx", "pgd", 8 / 255, recs), row_from_records("net_b.onnx", "-", 0.1, recs[:3])]


def test_rows_carry_wilson_intervals_of_each_accuracy() -> None:
    row = _rows()[0]
    assert (row.clean_accuracy, row.pgd_accuracy, row.verified_accuracy) == (80.0, 60.0, 40.0)
    assert (row.clean_ci_low, row.clean_ci_high) == pytest.approx(wilson_interval(4, 5))
    assert (row.pgd_ci_low, row.pgd_ci_high) == pytest.approx(wilson_interval(3, 5))
    assert (row.verified_ci_low, row.verified_ci_high) == pytest.approx(wilson_interval(2, 5))


def test_columns_choose_what_every_format_shows() -> None:
    assert 6 <= len(DEFAULT_COLUMNS) <= 8 and set(DEFAULT_COLUMNS) <= set(COLUMN_KEYS)
    assert parse_columns("default") == DEFAULT_COLUMNS
    assert parse_columns(["model,eps", "verified_ci"]) == ("model", "eps", "verified_ci")
    with pytest.raises(InputError, match="unknown table column 'accuracy'"):
        parse_columns("model,accuracy")
    rows = _rows()
    cols = ("model", "eps", "verified_accuracy", "verified_ci")
    md = format_table(rows, "md", cols, caption="n = 5.").splitlines()
    assert md[0] == "| model | eps | verified % | verified 95% CI |"
    lo, hi = wilson_interval(2, 5)
    assert md[2] == f"| net_a.onnx | 8/255 | 40.0 | [{lo:.1f}, {hi:.1f}] |"
    assert md[-1] == "n = 5."
    parsed = list(csv.DictReader(io.StringIO(format_table(rows, "csv", cols))))
    assert list(parsed[0]) == ["model", "eps", "verified_accuracy", "verified_ci_low", "verified_ci_high"]
    assert float(parsed[0]["verified_ci_low"]) == pytest.approx(lo) and float(parsed[0]["eps"]) == 8 / 255
    data = json.loads(format_table(rows, "json", cols))
    assert set(data[1]) == {"model", "eps", "verified_accuracy", "verified_ci_low", "verified_ci_high"}


def test_latex_is_a_booktabs_table_float() -> None:
    tex = format_table(_rows(), "latex", ("model", "eps", "verified_ci", "verified_accuracy"),
                       caption=table_caption(_rows(), 60.0, "bab"))
    lines = tex.splitlines()
    assert lines[:4] == [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{lrrr}"]
    assert [ln for ln in lines if ln in (r"\toprule", r"\midrule", r"\bottomrule")] == \
        [r"\toprule", r"\midrule", r"\bottomrule"]
    assert "|" not in tex and r"\hline" not in tex  # no vertical rules, no \hline
    assert r"\caption{n = 3-5 test images per row; time limit 60 s per sample; method bab; " in tex
    assert lines[-1] == r"\end{table}"
    # a cell starting with "[" is braced: after "\\" it would be an optional argument
    body = tex.split(r"\midrule")[1]
    assert " & {[" in body


def test_model_styles_are_colour_blind_safe_and_distinct() -> None:
    styles = [model_style(i) for i in range(56)]
    assert len(set(styles)) == 56
    assert all(c in OKABE_ITO and c in LINE_COLOURS and m in MARKERS for c, m in styles)
    assert "#F0E442" not in LINE_COLOURS  # the palette's yellow is too light for lines on white
    assert all(a[0] != b[0] and a[1] != b[1] for a, b in zip(styles, styles[1:]))  # neighbours differ in both


def test_accuracy_plot_of_thirteen_models_states_n_and_time(tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    rows = []
    for i in range(13):
        for eps in (0.1, 0.2, 0.3):
            recs = [_rec(j, "verified" if j < 12 - i - 10 * eps else "falsified", "bab") for j in range(20)]
            rows.append(row_from_records(f"jin_rinard_v{i}.onnx", "-", eps, recs))
    svg = plot_accuracy(rows, tmp_path / "acc.svg", "n = 20 test images per point; time limit 60 s per sample.")
    text = svg.read_text()
    assert "time limit 60 s per sample" in text and "n = 20" in text
    assert all(c.lower() in text.lower() for c in LINE_COLOURS)
    png = plot_accuracy(rows[:1], tmp_path / "one.png")
    img = mpimg.imread(png)
    assert img.shape[0] > 100 and float(np.std(img[..., :3])) > 0.01


def test_run_json_records_the_machine_and_the_code(tmp_path: Path) -> None:
    env = environment()
    assert {"date", "git", "cpu", "logical_cpus", "torch_threads", "python", "platform", "versions"} <= set(env)
    assert env["cpu"] and env["torch_threads"] >= 1 and env["versions"]["torch"] != "absent"
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"settings_hash": "abc"}))
    record_invocation(path, "verify", {"k": 1}, argv=["robustkit", "verify"])
    record_invocation(path, "verify", argv=["robustkit", "verify", "--rerun", "all"])
    data = json.loads(path.read_text())
    assert data["settings_hash"] == "abc" and len(data["invocations"]) == 2
    assert data["invocations"][0]["k"] == 1 and data["invocations"][1]["argv"][-1] == "all"
