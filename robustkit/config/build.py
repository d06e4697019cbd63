"""The library's frozen settings built from resolved command settings: a
:class:`~robustkit.verification.VerifyConfig` (how a property is decided), a
:class:`~robustkit.report.tables.TableConfig`, a :class:`~robustkit.vnnlib.bench.BenchOptions`."""

from __future__ import annotations

from pathlib import Path

from robustkit.config.resolve import Settings
from robustkit.numbers import parse_eps
from robustkit.report.tables import TableConfig, parse_columns
from robustkit.verification.config import VerifyConfig
from robustkit.vnnlib.bench import BenchOptions


def verify_config(s: Settings, eps: str | None = None) -> VerifyConfig:
    """How each property is decided (``eps``: the radius as given; none for VNN-LIB instances,
    whose property holds the box)."""
    write_milp = s.values.get("write_milp")
    return VerifyConfig(
        eps=parse_eps(eps) if eps is not None else 0.0,
        timeout=float(s.values.get("timeout") or VerifyConfig.timeout),
        method=s["method"], tighten=s["bounds"], formulation=s["formulation"],  # type: ignore[arg-type]
        attack_steps=s["attack_steps"], attack_restarts=s["attack_restarts"], seed=s["seed"],
        solver=s["solver"], write_milp=None if write_milp is None else str(Path(write_milp).resolve()),
        bab_intermediate=s["bab_intermediate"], bab_depth_weight=float(s["bab_depth_weight"]),
        bab_split=s["bab_split"],
    )


def table_config(s: Settings, results_root: Path, quiet: bool) -> TableConfig:
    """The models x eps table of ``robustkit table``; per-sample records under ``results_root``."""
    return TableConfig(
        models=tuple(s["models"]), eps=tuple(parse_eps(e) for e in s["eps"]), n=s["n"], start=s["start"],
        timeout=float(s["timeout"]), method=s["method"], tighten=s["bounds"], attack_steps=s["attack_steps"],
        attack_restarts=s["attack_restarts"], workers=s["workers"], results_root=results_root,
        dataset=s["dataset"], data_dir=s["data_dir"], quiet=quiet, formulation=s["formulation"],
        solver=s["solver"], bab_intermediate=s["bab_intermediate"], bab_depth_weight=float(s["bab_depth_weight"]),
        bab_split=s["bab_split"], seed=s["seed"], order=s["order"], inputs=s.values.get("inputs"),
    )


def columns(s: Settings) -> tuple[str, ...]:
    return parse_columns(s["columns"])


def bench_options(s: Settings) -> BenchOptions:
    """How ``robustkit bench vnncomp`` runs the instances."""
    return BenchOptions(timeout_scale=float(s["timeout_scale"]), workers=s["workers"], limit=s["limit"],
                        filter=s["filter"], out=s["out"], rerun=tuple(s["rerun"]), quiet=s["quiet"])
