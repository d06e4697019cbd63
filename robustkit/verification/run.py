"""Verifying many samples of a dataset: tasks, worker processes, the resumable store, a summary."""

from __future__ import annotations

import json
import logging
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from robustkit.errors import InputError
from robustkit.metadata import dataset_of, value_range_of
from robustkit.verification.config import VerifyConfig
from robustkit.verification.model import ModelContext

log = logging.getLogger(__name__)

STATUSES = ("verified", "falsified", "misclassified", "timeout", "unknown", "error")


@dataclass(frozen=True)
class SampleTask:
    """One sample to verify (picklable; the model travels once per worker, not per task)."""

    key: str
    index: int
    x: np.ndarray
    label: int
    cfg: VerifyConfig
    value_range: tuple[float, float]


class _WorkerState:
    """The model of this worker process, loaded once by :func:`init_worker`."""

    ctx: ModelContext | None = None


def init_worker(model_bytes: bytes, source: str) -> None:
    _WorkerState.ctx = ModelContext.from_bytes(model_bytes, source)


def verify_task(task: SampleTask) -> dict[str, Any]:
    """Worker entry point: verify one sample and return its record."""
    from robustkit.verification.pipeline import verify_sample

    if _WorkerState.ctx is None:
        raise RuntimeError("worker not initialised")
    record = verify_sample(_WorkerState.ctx, task.x, task.label, task.cfg, task.value_range,
                           tag=task.key.replace(":", "_"))
    record["index"] = task.index
    record["eps"] = task.cfg.eps
    return record


@dataclass(frozen=True)
class DatasetChoice:
    """Which samples: a dataset name, a data dir (None = embedded subset), the index range."""

    dataset: str
    n: int
    start: int = 0
    data_dir: Path | None = None
    inputs: Path | None = None  # an .npz with x and y arrays: the samples instead of the dataset's test split

    def __post_init__(self) -> None:
        if self.n <= 0 or self.start < 0:
            raise InputError("--n must be positive and --start non-negative")


def model_dataset(ctx: ModelContext, override: str | None) -> str:
    """The dataset a model was trained on: ``--dataset`` or the model's metadata, else an error."""
    return dataset_of(ctx.net.metadata, override, "the model")


def input_tag(ctx: ModelContext, override: str | None, inputs: Path | None) -> str:
    """The name the samples' keys carry: the dataset (:func:`model_dataset`), or with ``--inputs``
    the file's name."""
    if inputs is not None:
        return Path(inputs).name
    return model_dataset(ctx, override)


def model_value_range(ctx: ModelContext) -> tuple[float, float]:
    return value_range_of(ctx.net.metadata)


def load_samples(choice: DatasetChoice, ctx: ModelContext) -> tuple[np.ndarray, np.ndarray, str]:
    """Flat float32 images and labels of the chosen samples, and where they came from."""
    from robustkit.data import load_dataset, load_inputs

    if choice.inputs is not None:
        ds = load_inputs(choice.inputs)
    else:
        ds = load_dataset(choice.dataset, "test", choice.data_dir)  # embedded subset when no data dir is set
    total = int(ds.images.shape[0])
    if choice.start >= total:
        raise InputError(f"--start {choice.start} is beyond the {total} test images of {ds.source}")
    stop = min(total, choice.start + choice.n)
    if stop - choice.start < choice.n:
        log.warning("only %d images available from %s (asked for %d)", stop - choice.start, ds.source, choice.n)
    x = ds.images[choice.start:stop].reshape(stop - choice.start, -1).numpy().astype(np.float32)
    if x.shape[1] != ctx.net.in_dim:
        raise InputError(
            f"{choice.dataset} images have {x.shape[1]} values but the model expects {ctx.net.in_dim} "
            f"(input shape {ctx.net.sample_shape}); wrong --dataset?"
        )
    check_labels(ds.labels[choice.start:stop].numpy(), ctx.net.out_dim, str(ds.source))
    y = ds.labels[choice.start:stop].numpy().astype(np.int64)
    return x, y, str(ds.source)


def check_labels(y: np.ndarray, classes: int, source: str) -> None:
    """Labels must be class indices of the model: ``0 .. classes - 1``."""
    y = np.asarray(y)
    bad = np.flatnonzero((y < 0) | (y >= classes))
    if bad.size:
        raise InputError(f"labels of {source} out of range: y[{int(bad[0])}] = {int(y[bad[0]])}, but the model has "
                         f"{classes} outputs (labels 0..{classes - 1}); {bad.size} such labels")


def input_digest(path: Path) -> str:
    """sha256 of an inputs file (the settings of a run on it: other data, other results)."""
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The table a researcher reports, computed from per-sample records only."""
    n = len(records)
    counts = {s: sum(1 for r in records if r.get("status") == s) for s in STATUSES}
    correct = n - counts["misclassified"]
    by_attack = sum(1 for r in records if r.get("status") == "falsified" and r.get("stage") == "attack")
    decided = [r for r in records if r.get("status") not in ("misclassified",)]
    times = [float(r["time"]) for r in decided if "time" in r]
    unstable = [sum(r["unstable_per_layer"]) for r in records if r.get("unstable_per_layer") is not None]
    binaries = [r["n_binaries"] for r in records if r.get("n_binaries") is not None]

    def pct(k: int) -> float:
        return 100.0 * k / n if n else 0.0

    return {
        "n": n,
        "clean_accuracy": pct(correct),
        "pgd_accuracy": pct(correct - by_attack),
        "verified_accuracy": pct(counts["verified"]),
        **{s: counts[s] for s in STATUSES},
        "mean_time": statistics.fmean(times) if times else 0.0,
        "median_time": statistics.median(times) if times else 0.0,
        "p95_time": float(np.percentile(times, 95)) if times else 0.0,
        "mean_unstable_relus": statistics.fmean(unstable) if unstable else 0.0,
        "mean_unstable_per_layer": _per_layer(records),
        "mean_binaries": statistics.fmean(binaries) if binaries else 0.0,
    }


def _per_layer(records: list[dict[str, Any]]) -> list[float]:
    """Mean unstable ReLUs per layer over the records that reached the bounds stage (those with
    the most common layer count; empty when none did)."""
    rows = [r["unstable_per_layer"] for r in records if r.get("unstable_per_layer") is not None]
    if not rows:
        return []
    k = statistics.mode(len(u) for u in rows)
    return [float(v) for v in np.mean([u for u in rows if len(u) == k], axis=0)]


def make_tasks(x: np.ndarray, y: np.ndarray, start: int, dataset: str, cfg: VerifyConfig,
               value_range: tuple[float, float]) -> list[SampleTask]:
    return [
        SampleTask(f"{dataset}:{start + i}", start + i, x[i], int(y[i]), cfg, value_range) for i in range(len(y))
    ]


def run_tasks(tasks: list[SampleTask], ctx: ModelContext, source: str, workers: int, cfg: VerifyConfig,
              on_result: Callable[[dict], None], cluster: str | None = None, scheduler: str | None = None) -> None:
    """Run the tasks on the local pool (hard timeout = the sample timeout + slack) or on Dask."""
    hard = cfg.timeout * 1.5 + 30.0
    if cluster or scheduler:
        from robustkit.runner.dask_backend import run_dask

        run_dask(tasks, verify_task, on_result, cluster=cluster, scheduler=scheduler,
                 initializer=init_worker, initargs=(ctx.model_bytes, source), hard_timeout=hard)
        return
    from robustkit.runner.pool import run_pool

    run_pool(tasks, verify_task, workers, hard, on_result, initializer=init_worker,
             initargs=(ctx.model_bytes, source))


@dataclass(frozen=True)
class RunOptions:
    """Where results go and how samples are executed."""

    out: Path | None = None  # a .jsonl file, or None for <results_root>/<settings hash>/records.jsonl
    results_root: Path = Path("robustkit-results")
    run_dir: Path | None = None  # a folder for run.json + records.jsonl (instead of out / results_root)
    workers: int = 1
    rerun: tuple[str, ...] = ()
    quiet: bool = False
    cluster: str | None = None
    scheduler: str | None = None
    order: str = "hardest-first"  # see robustkit.verification.schedule

    def __post_init__(self) -> None:
        from robustkit.verification.schedule import check_order

        if self.workers < 0:
            raise InputError("--workers must be >= 0")
        check_order(self.order)
        bad = set(self.rerun) - {"timeout", "unknown", "error", "all"}
        if bad:
            raise InputError(f"--rerun takes timeout, unknown, error or all; got {sorted(bad)}")


@dataclass
class RunOutcome:
    records: list[dict[str, Any]]
    summary: dict[str, Any]
    records_path: Path
    skipped: int


def open_store(ctx: ModelContext, settings: dict[str, Any], opts: RunOptions):  # type: ignore[no-untyped-def]
    """The result store for these settings; a plain ``--out FILE.jsonl`` keeps its settings hash in
    ``FILE.jsonl.run.json`` and refuses to mix results of other settings into the file."""
    from robustkit.runner.store import ResultStore, RunDir, settings_hash

    if opts.run_dir is not None:
        return RunDir.at(opts.run_dir, settings_hash(ctx.model_bytes, settings), settings).store()
    if opts.out is None:
        return RunDir.for_settings(opts.results_root, ctx.model_bytes, settings).store()
    out = Path(opts.out)
    digest = settings_hash(ctx.model_bytes, settings)
    meta = out.with_name(out.name + ".run.json")
    if meta.exists():
        stored = json.loads(meta.read_text()).get("settings_hash")
        if stored != digest:
            raise InputError(f"{out} holds results of other settings or another model (hash {str(stored)[:12]} vs "
                             f"{digest[:12]}); choose another --out or delete it")
    elif out.exists() and out.stat().st_size > 0:
        raise InputError(f"{out} exists but was not written by this kind of run; choose another --out")
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps({"settings_hash": digest, "settings": settings}, indent=2, default=str) + "\n")
    return ResultStore(out)


def verify_samples(ctx: ModelContext, x: np.ndarray, y: np.ndarray, cfg: VerifyConfig,
                   value_range: tuple[float, float], opts: RunOptions, *, tag: str = "input", start: int = 0,
                   store: Any = None, source: str = "<model>") -> tuple[list[dict[str, Any]], int]:
    """Verify every ``(x[i], y[i])`` (flat float32 samples, int labels; keys ``tag:start+i``):
    the records in sample order, and how many were already finished in ``store`` (a
    :class:`~robustkit.runner.store.ResultStore`, or None: nothing is kept on disk)."""
    from robustkit.runner.progress import RunProgress

    all_tasks = make_tasks(x, y, start, tag, cfg, value_range)
    rerun = ("timeout", "unknown", "error", "verified", "falsified", "misclassified") if "all" in opts.rerun \
        else opts.rerun
    done = store.done_keys(rerun=rerun) if store is not None else set()
    tasks = [t for t in all_tasks if t.key not in done]
    skipped = len(all_tasks) - len(tasks)
    if skipped:
        log.info("resuming: %d of %d samples already finished in %s", skipped, len(all_tasks), store.path)
    if opts.workers != 1 or opts.cluster or opts.scheduler:
        from robustkit.verification.schedule import order_tasks

        tasks = order_tasks(tasks, ctx.net, cfg.eps, value_range, opts.order)
    fresh: dict[str, dict[str, Any]] = {}
    with RunProgress(len(tasks), f"verify eps={cfg.eps:g}", quiet=opts.quiet) as progress:
        def on_result(record: dict) -> None:
            record.setdefault("index", int(str(record["key"]).rsplit(":", 1)[-1]))
            record.setdefault("eps", cfg.eps)
            if store is not None:
                store.append(record)
            fresh[str(record["key"])] = record
            progress.update(record)

        if tasks:
            run_tasks(tasks, ctx, source, opts.workers, cfg, on_result, opts.cluster, opts.scheduler)
    wanted = {t.key for t in all_tasks}
    found = store.records() if store is not None else fresh
    records = [r for k, r in found.items() if k in wanted]
    records.sort(key=lambda r: int(r.get("index", 0)))
    return records, skipped


def verify_dataset(model_path: Path, cfg: VerifyConfig, choice: DatasetChoice, opts: RunOptions) -> RunOutcome:
    """Verify ``choice.n`` test samples (or those of ``choice.inputs``); resumes from the store,
    skipping finished samples."""
    from robustkit.runner.store import versions

    ctx = ModelContext.from_path(model_path)
    value_range = model_value_range(ctx)
    x, y, source = load_samples(choice, ctx)
    settings = {"verify": cfg.to_dict(), "dataset": choice.dataset, "value_range": list(value_range),
                "versions": versions()}
    if choice.inputs is not None:
        settings["inputs"] = input_digest(choice.inputs)
    store = open_store(ctx, settings, opts)
    records, skipped = verify_samples(ctx, x, y, cfg, value_range, opts, tag=choice.dataset, start=choice.start,
                                      store=store, source=str(model_path))
    return RunOutcome(records, summarize(records), Path(store.path), skipped)
