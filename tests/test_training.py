"""Training: schedules, config validation, the loop's accuracy, loss composition, resume, CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustkit.cli.main import main as cli_main
from robustkit.data import DATA_ENV, load_dataset
from robustkit.errors import InputError
from robustkit.network.passes import Activations
from robustkit.regularizers.base import Regularizer, RegOutput, ScheduleState
from robustkit.training import (
    TrainConfig,
    TrainingDivergedError,
    eps_at,
    load_trained,
    lr_at,
    parse_lr_schedule,
    parse_ramp,
    read_metrics,
    train,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "data"
needs_data = pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason=f"shared data not found at {DATA}")


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(DATA_ENV, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny(**kw: Any) -> TrainConfig:
    base: dict[str, Any] = dict(net="mlp", hidden=(32,), epochs=2, n_train=300, n_eval=200, batch_size=50,
                                data_dir=str(DATA))
    base.update(kw)
    return TrainConfig(**base)


# ---------------------------------------------------------------- schedules and config

def test_lr_schedule() -> None:
    knots = parse_lr_schedule("0:1e-3, 10:1e-3, 20:1e-4")
    assert knots == ((0.0, 1e-3), (10.0, 1e-3), (20.0, 1e-4))
    assert lr_at(knots, 5.0) == pytest.approx(1e-3)
    assert lr_at(knots, 15.0) == pytest.approx(0.5 * (1e-3 + 1e-4))
    assert lr_at(knots, 30.0) == pytest.approx(1e-4)
    assert parse_lr_schedule("3e-4") == ((0.0, 3e-4),)
    for bad in ("", "0:1e-3,0:1e-4", "a:1", "1e-3:", "0:-1"):
        with pytest.raises(InputError):
            parse_lr_schedule(bad)


def test_eps_ramp() -> None:
    assert eps_at(0.3, 0.0, (2.0, 12.0), 0.0) == 0.0
    assert eps_at(0.3, 0.0, (2.0, 12.0), 7.0) == pytest.approx(0.15)
    assert eps_at(0.3, 0.1, (2.0, 12.0), 12.5) == pytest.approx(0.3)
    assert eps_at(0.3, 0.0, (0.0, 0.0), 0.0) == 0.3
    assert parse_ramp("1:10") == (1.0, 10.0)
    for bad in ("5", "10:1", "-1:2"):
        with pytest.raises(InputError):
            parse_ramp(bad)


def test_config_validation_and_round_trip() -> None:
    cfg = TrainConfig(dataset="CIFAR-10", net="small", lr=[[0, 1e-3], [5, 1e-4]], regularizers=["none", " "])
    assert cfg.dataset == "cifar10" and cfg.lr == ((0.0, 1e-3), (5.0, 1e-4)) and cfg.regularizers == ("none",)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.net_config().mean == (0.4914, 0.4822, 0.4465)  # CIFAR normalizes by default
    assert TrainConfig(dataset="mnist").net_config().mean is None
    bad: list[dict[str, Any]] = [
        {"optimizer": "rmsprop"}, {"net": "resnet50"}, {"hidden": (10,)}, {"eps": -0.1}, {"epochs": 0},
        {"momentum": 1.0}, {"device": "tpu!"}, {"eps_ramp": (5, 1)}, {"n_train": 0}, {"dataset": "svhn"},
    ]
    for kw in bad:
        with pytest.raises(InputError):
            TrainConfig(**kw)
    with pytest.raises(InputError, match="unknown training config keys"):
        TrainConfig.from_dict({"epochz": 3})


# ---------------------------------------------------------------- the loop

@needs_data
def test_one_epoch_mlp_learns(tmp_path: Path) -> None:
    cfg = TrainConfig(net="mlp", epochs=1, n_train=2000, batch_size=20, lr=((0.0, 2e-3),), data_dir=str(DATA))
    result = train(cfg, tmp_path / "run", quiet=True)
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "model.pt"):
        assert (tmp_path / "run" / name).is_file()
    assert result.epochs_done == 1 and len(result.history) == 1
    # independent evaluation of the saved model on the first 1000 test images
    trained = load_trained(tmp_path / "run")
    test = load_dataset("mnist", "test", DATA).head(1000)
    with torch.no_grad():
        acc = (trained.model(test.images).argmax(1) == test.labels).double().mean().item()
    assert acc == pytest.approx(result.test_acc) and acc > 0.80
    assert trained.metrics["test_acc"] == pytest.approx(acc)
    assert TrainConfig.from_dict(json.loads((tmp_path / "run" / "config.json").read_text())) == cfg


class _Recorder(Regularizer):
    """Adds ``weight * mean(logits**2)`` and records the eps it was given."""

    name = "recorder"

    def __init__(self, weight: float = 0.5, replaces: bool = False) -> None:
        self.weight, self.replaces = weight, replaces
        self.states: list[ScheduleState] = []
        self.expected_loss: list[float] = []

    def __call__(self, model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, state: ScheduleState,
                 clean: Activations) -> RegOutput:
        self.states.append(state)
        term = self.weight * clean.logits.pow(2).mean()
        ce = F.cross_entropy(clean.logits, y)
        self.expected_loss.append(float(term.detach()) + (0.0 if self.replaces else float(ce.detach())))
        return RegOutput(terms={"sq": term}, metrics={"seen": float(len(y))}, replaces_clean_loss=self.replaces)


@needs_data
@pytest.mark.parametrize("replaces", [False, True])
def test_regularizer_terms_and_eps_ramp(tmp_path: Path, replaces: bool) -> None:
    reg = _Recorder(replaces=replaces)
    cfg = _tiny(epochs=1, eps=0.2, eps_ramp=(0.0, 1.0))
    result = train(cfg, tmp_path / "run", quiet=True, regularizers=[reg])
    n_batches = 6
    assert [s.step for s in reg.states] == list(range(n_batches))
    assert [s.eps for s in reg.states] == pytest.approx([0.2 * b / n_batches for b in range(n_batches)])
    rec = result.history[0]
    assert rec["loss"] == pytest.approx(sum(reg.expected_loss) / n_batches, rel=1e-5)
    assert rec["terms"]["recorder.sq"] > 0 and rec["metrics"]["recorder.seen"] == pytest.approx(50.0)
    assert rec["eps"] == pytest.approx(0.2 * 5 / 6)


class _NanReg(_Recorder):
    def __call__(self, *args: Any) -> RegOutput:
        return RegOutput(terms={"nan": torch.tensor(float("nan"))})


@needs_data
def test_divergence_is_reported(tmp_path: Path) -> None:
    with pytest.raises(TrainingDivergedError, match="loss became nan"):
        train(_tiny(epochs=1), tmp_path / "run", quiet=True, regularizers=[_NanReg()])


@needs_data
def test_unknown_regularizer_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        train(_tiny(regularizers=("no-such-regularizer",)), tmp_path / "run", quiet=True)


class _Interrupt(Exception):
    pass


@needs_data
def test_resume_continues_at_the_next_epoch(tmp_path: Path) -> None:
    cfg = _tiny(epochs=3)
    full = train(cfg, tmp_path / "full", quiet=True)

    def stop_after_first(record: dict[str, Any]) -> None:
        if record["epoch"] == 1:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train(cfg, tmp_path / "cut", quiet=True, on_epoch=stop_after_first)
    assert not (tmp_path / "cut" / "model.pt").exists()
    assert [r["epoch"] for r in read_metrics(tmp_path / "cut")] == [1]
    with pytest.raises(InputError, match="--resume"):
        train(cfg, tmp_path / "cut", quiet=True)
    with pytest.raises(InputError, match="seed"):
        train(_tiny(epochs=3, seed=5), tmp_path / "cut", resume=True, quiet=True)

    seen: list[int] = []
    resumed = train(cfg, tmp_path / "cut", resume=True, quiet=True, on_epoch=lambda r: seen.append(r["epoch"]))
    assert seen == [2, 3]
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    assert [r["steps"] for r in resumed.history] == [6, 12, 18]
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.history[-1]["test_acc"] == full.history[-1]["test_acc"]


# ---------------------------------------------------------------- CLI

@needs_data
def test_cli_train_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--net", "mlp", "--hidden", "16", "--epochs", "1", "--n-train", "200",
            "--n-eval", "100", "--data-dir", str(DATA), "--lr", "0:1e-3,1:5e-4", "--eps", "1/10", "--quiet"]
    assert cli_main(args) == 0
    cfg = TrainConfig.from_dict(json.loads((out / "config.json").read_text()))
    assert cfg.hidden == (16,) and cfg.eps == pytest.approx(0.1) and cfg.lr == ((0.0, 1e-3), (1.0, 5e-4))
    # --resume with only the new epoch count takes everything else from the checkpoint
    assert cli_main(["train", "--out", str(out), "--resume", "--epochs", "2", "--quiet"]) == 0
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2]
    assert "2 epochs" in capsys.readouterr().out


def test_cli_train_without_data_dir_fails_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["train", "--out", str(tmp_path / "run"), "--epochs", "1", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "--data-dir" in err and DATA_ENV in err
    assert cli_main(["train", "--out", str(tmp_path / "r2"), "--eps", "abc"]) == 1
