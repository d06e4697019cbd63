"""Flushing float32 subnormals: the context manager's mode handling, and where robustkit uses it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from robustkit.attacks import PGD
from robustkit.subnormal import flush_subnormals, subnormals_flushed
from robustkit.training import TrainConfig, train

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason=f"shared data not found at {DATA}")


@pytest.fixture(autouse=True)
def _can_flush() -> None:
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush subnormals")


def test_flush_is_scoped_nested_and_restored_on_error() -> None:
    assert not subnormals_flushed()
    with flush_subnormals() as active:
        assert active and subnormals_flushed()
        with flush_subnormals():
            assert subnormals_flushed()
        assert subnormals_flushed()  # the inner block must not switch the outer one off
        with flush_subnormals(enabled=False):
            assert subnormals_flushed()  # disabled = leave the mode alone
    assert not subnormals_flushed()
    with pytest.raises(RuntimeError), flush_subnormals():
        raise RuntimeError("boom")
    assert not subnormals_flushed()


class _Stop(Exception):
    pass


@needs_data
def test_training_flushes_and_restores_also_when_interrupted(tmp_path: Path) -> None:
    cfg = TrainConfig(net="mlp", hidden=(32,), epochs=1, n_train=200, n_eval=100, batch_size=50, data_dir=str(DATA))
    seen: list[bool] = []
    train(cfg, tmp_path / "a", quiet=True, on_epoch=lambda r: seen.append(subnormals_flushed()))
    assert seen == [True] and not subnormals_flushed()

    def stop(record: dict[str, Any]) -> None:
        raise _Stop

    with pytest.raises(_Stop):
        train(cfg, tmp_path / "b", quiet=True, on_epoch=stop)
    assert not subnormals_flushed()


def test_pgd_with_subnormal_weights_keeps_its_contract_and_the_mode() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 3))
    with torch.no_grad():  # a third of the first layer decayed into the subnormal range
        w = model[0].weight
        w[torch.rand(w.shape) < 0.33] = 1e-41
    x = torch.rand(32, 20)
    y = model(x).argmax(1)
    seen: list[bool] = []
    hook = model[0].register_forward_hook(lambda m, i, o: seen.append(subnormals_flushed()))
    res = PGD(steps=20, seed=0).run(model, x, y, eps=0.2)
    hook.remove()
    assert not subnormals_flushed()
    assert True in seen and seen[-1] is False  # the search ran flushed; the success check unflushed
    assert ((res.x_adv - x).abs() <= 0.2 + 1e-7).all()
    with torch.no_grad():
        assert torch.equal(res.success, model(res.x_adv).argmax(1) != y)
