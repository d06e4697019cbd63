"""Graph nets (``maxpool``: MaxPool2d; ``resnet``: Residual blocks): structure, activations,
ONNX export (MaxPool, Add) equal to torch in onnxruntime, one training step."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustkit.data import DATA_ENV
from robustkit.errors import InputError
from robustkit.onnx_export import check_onnx_matches, export_onnx, sequential_to_onnx
from robustkit.nets import NetConfig, Residual, build_net, forward_with_activations
from robustkit.regularizers.base import ScheduleState
from robustkit.training import TrainConfig, train

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "data"
needs_data = pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason=f"shared data not found at {DATA}")

GRAPH_NETS = ("maxpool", "resnet")
OPS = {
    "maxpool": {"Conv", "Relu", "MaxPool", "Flatten", "Gemm"},
    "resnet": {"Conv", "Relu", "Add", "Flatten", "Gemm"},
}


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(DATA_ENV, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _net(name: str, shape: tuple[int, int, int] = (1, 28, 28), seed: int = 0, **kw: object) -> nn.Sequential:
    torch.manual_seed(seed)
    return build_net(NetConfig(name, shape, **kw)).eval()  # type: ignore[arg-type]


def test_architectures() -> None:
    mp = _net("maxpool")
    assert [type(m).__name__ for m in mp] == [
        "Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "MaxPool2d", "Flatten", "Linear", "ReLU", "Linear"]
    assert mp[7].in_features == 16 * 7 * 7
    rn = _net("resnet")
    assert [type(m).__name__ for m in rn] == [
        "Conv2d", "ReLU", "Residual", "ReLU", "Residual", "ReLU", "Flatten", "Linear", "ReLU", "Linear"]
    assert rn[0].stride == (2, 2) and rn[7].in_features == 8 * 14 * 14
    assert [type(m).__name__ for m in rn[2].body] == ["Conv2d", "ReLU", "Conv2d"]
    # other input shapes (CIFAR, odd sizes) build and run
    for name in GRAPH_NETS:
        for shape in ((3, 32, 32), (1, 9, 11)):
            assert _net(name, shape)(torch.rand(2, *shape)).shape == (2, 10)
    with pytest.raises(InputError, match="too small"):
        NetConfig("maxpool", (1, 3, 3)) and build_net(NetConfig("maxpool", (1, 3, 3)))
    with pytest.raises(InputError, match="Sequential"):
        Residual(nn.Conv2d(1, 1, 3))  # type: ignore[arg-type]


def test_residual_block_is_x_plus_body() -> None:
    block = _net("resnet")[2]
    x = torch.randn(3, 8, 14, 14)
    body = block.body
    expected = x + body[2](F.relu(body[0](x)))
    torch.testing.assert_close(block(x), expected)


@pytest.mark.parametrize("name", GRAPH_NETS)
def test_activations_include_residual_relus(name: str) -> None:
    model = _net(name)
    x = torch.rand(4, 1, 28, 28)
    acts = forward_with_activations(model, x)
    torch.testing.assert_close(acts.logits, model(x))
    n_relu = sum(isinstance(m, nn.ReLU) for m in model.modules())
    assert len(acts.preacts) == len(acts.posts) == n_relu  # a MaxPool's own ReLUs are not the model's
    assert len(acts.inputs) == len(acts.network.layers)
    for z, h in zip(acts.preacts, acts.posts):
        torch.testing.assert_close(h, z.clamp_min(0))
    if name == "resnet":
        assert n_relu == 6  # stem, 2 x (inside the body, after the Add), FC
        blk = model[2]
        stem = F.relu(model[0](x))
        torch.testing.assert_close(acts.preacts[1], blk.body[0](stem).flatten(1))  # the ReLU inside block 1
        torch.testing.assert_close(acts.preacts[2], blk(stem).flatten(1))  # the ReLU after block 1's Add
    assert acts.last_hidden.shape == (4, 100)


@pytest.mark.parametrize("name", GRAPH_NETS)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_export_equals_torch(tmp_path: Path, name: str, shape: tuple[int, int, int]) -> None:
    model = _net(name, shape)
    path = export_onnx(model, tmp_path / "m.onnx", input_shape=shape)  # runs check_onnx_matches
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert {n.op_type for n in proto.graph.node} == OPS[name]
    assert path.stat().st_size < 1_000_000
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(13, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0], ref, atol=1e-5, rtol=1e-5)
    if name == "maxpool":
        pools = [n for n in proto.graph.node if n.op_type == "MaxPool"]
        assert len(pools) == 2
        attrs = {a.name: list(a.ints) for a in pools[0].attribute}
        assert {k: attrs[k] for k in ("kernel_shape", "strides", "pads")} == {
            "kernel_shape": [2, 2], "strides": [2, 2], "pads": [0, 0, 0, 0]}
    else:
        adds = [n for n in proto.graph.node if n.op_type == "Add"]
        assert len(adds) == 2
        producer = {o: n for n in proto.graph.node for o in n.output}
        for add in adds:
            # Add(block input, body output): the input comes from the ReLU before the block,
            # the other operand from the body's second Conv, which runs on that same tensor's path
            assert producer[add.input[0]].op_type == "Relu" and producer[add.input[1]].op_type == "Conv"
        assert len({t.name for t in proto.graph.initializer}) == len(proto.graph.initializer)


def test_maxpool_variants_export(tmp_path: Path) -> None:
    """Padding, stride != kernel, default stride; a residual body with a MaxPool-free body that has
    a bias-free conv. ceil_mode and dilation, which robustkit's ONNX loader does not read, are
    refused before exporting, naming the module."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.MaxPool2d(2),
        Residual(nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(3, 3, 1))),
        nn.ReLU(), nn.Flatten(), nn.Linear(3 * 3 * 3, 5),
    ).eval()
    path = export_onnx(model, tmp_path / "v.onnx", input_shape=(1, 13, 13))
    assert check_onnx_matches(model, path, (1, 13, 13), value_range=(-1.0, 1.0)) <= 1e-5
    with pytest.raises(InputError, match="dilation"):
        sequential_to_onnx(nn.Sequential(nn.MaxPool2d(2, dilation=2), nn.Flatten(), nn.Linear(4, 2)), (1, 6, 6))
    with pytest.raises(InputError, match=r"'1' \(MaxPool2d\).*ceil_mode"):
        sequential_to_onnx(nn.Sequential(nn.Conv2d(1, 1, 1), nn.MaxPool2d(2, ceil_mode=True), nn.Flatten(),
                                         nn.Linear(9, 2)), (1, 5, 5))
    with pytest.raises(InputError, match=r"Sequential fails on an input of shape \(1, 1, 2, 2\)"):
        sequential_to_onnx(nn.Sequential(Residual(nn.Sequential(nn.Flatten())), nn.Linear(4, 2)), (1, 2, 2))


@pytest.mark.parametrize("name", GRAPH_NETS)
def test_one_pgd_step_changes_weights(name: str) -> None:
    """A hand-driven step of the PGD regularizer (no data needed)."""
    from robustkit.regularizers.pgd import PGDConfig, PGDTraining

    model = _net(name).train()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    clean = forward_with_activations(model, x)
    out = PGDTraining(PGDConfig(steps=2))(model, x, y, ScheduleState(epoch=0, step=0, eps=0.1, total_epochs=1), clean)
    assert out.replaces_clean_loss
    loss = sum(out.terms.values())
    opt.zero_grad()
    loss.backward()  # type: ignore[union-attr]
    opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@needs_data
@pytest.mark.parametrize("name", GRAPH_NETS)
@pytest.mark.parametrize("reg", ["none", "pgd:steps=2"])
def test_train_tiny_and_export(tmp_path: Path, name: str, reg: str) -> None:
    cfg = TrainConfig(net=name, epochs=1, n_train=100, n_eval=50, batch_size=50, eps=0.1,
                      regularizers=(reg,), data_dir=str(DATA))
    result = train(cfg, tmp_path / "run", quiet=True)
    assert result.epochs_done == 1 and 0.0 <= result.test_acc <= 1.0
    out = export_onnx(tmp_path / "run", tmp_path / "m.onnx")
    assert check_onnx_matches(result.model, out, (1, 28, 28)) <= 1e-5


@pytest.mark.parametrize("name", GRAPH_NETS)
def test_bound_regularizers_work_on_graph_nets(name: str) -> None:
    """relu-stability and ibp bound the captured network (the MaxPool's tournament ReLUs and the
    residual sums included): every sampled pre-activation and margin lies in its bounds, and the
    terms have gradients."""
    from robustkit.network.passes import forward_with_activations as net_forward
    from robustkit.regularizers.ibp import IBPTraining, worst_case_margins
    from robustkit.regularizers.relu_stability import ReluStability, interval_preactivations

    model = _net(name).train()
    torch.manual_seed(1)
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    lo, hi = (x - 0.02).clamp(0, 1), (x + 0.02).clamp(0, 1)
    clean = forward_with_activations(model, x)
    net = clean.network
    bounds = interval_preactivations(net, lo, hi)
    kinds = [layer for layer in net.layers if layer.nonlinear]
    assert len(bounds) == len(kinds) > len(clean.preacts) or name == "resnet"
    margins = worst_case_margins(net, lo, hi, y)
    for _ in range(20):
        pt = torch.where(torch.rand_like(x) < 0.5, lo, hi) if _ % 2 else lo + (hi - lo) * torch.rand_like(x)
        h = pt.reshape(4, -1)
        k = 0
        for layer in net.layers:
            if layer.nonlinear:
                own = h if layer.identity is None else h[:, ~layer.identity]
                assert bool((bounds[k][0] <= own + 1e-5).all() and (own <= bounds[k][1] + 1e-5).all())
                k += 1
            h = layer.forward(h)
        with torch.no_grad():
            z = model(pt)
        assert bool((z - z.gather(1, y[:, None]) <= margins + 1e-5).all())
        torch.testing.assert_close(net_forward(net, pt).logits, z)
    state = ScheduleState(epoch=0, step=0, eps=0.02, total_epochs=1)
    for reg in (ReluStability(), IBPTraining()):
        out = reg(model, x, y, state, clean)
        model.zero_grad(set_to_none=True)
        sum(out.terms.values()).backward(retain_graph=True)
        grads = [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters()]
        # relu-stability bounds the hidden operators' inputs: the last layer plays no part
        assert (all(grads) if reg.name == "ibp" else grads[0] and not any(grads[-2:])), reg.name


@pytest.mark.parametrize("name", GRAPH_NETS)
def test_contractive_on_graph_nets_equals_autograd_jacobians(name: str) -> None:
    """The closed-form stage norms of the contractive penalty are ``||d h_k / d h_(k-1)||_F^2``
    between consecutive nonlinear operators of the captured network (carried coordinates of a
    residual block and a MaxPool's tournament included), as autograd computes them."""
    from robustkit.regularizers.contractive import layer_frobenius_norms

    model = _net(name).double().eval()
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    clean = forward_with_activations(model, x)
    net = clean.network
    norms = layer_frobenius_norms(net, clean, output="logits")
    cuts = [-1] + [i for i, layer in enumerate(net.layers) if layer.nonlinear] + [len(net.layers) - 1]
    assert len(norms) == len(cuts) - 1
    for b in range(2):
        for s, (start, stop) in enumerate(zip(cuts[:-1], cuts[1:])):
            h0 = clean.inputs[start + 1][b:b + 1]

            def stage(h: torch.Tensor, start: int = start, stop: int = stop) -> torch.Tensor:
                for layer in net.layers[start + 1:stop + 1]:
                    h = layer.forward(h)
                return h

            jac = torch.autograd.functional.jacobian(stage, h0)
            assert float(norms[s][b].detach()) == pytest.approx(float(jac.pow(2).sum()), rel=1e-9)
