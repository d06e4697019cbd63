"""Tests of the attacks: PGD (L-inf, L2), FGSM, targeted, and the general box attack."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robustkit.attacks import PGD, attack_box, distance, fgsm, make_attack
from robustkit.errors import InputError

DIM = 20


def _blobs(n: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs in [0, 1]^DIM (noise sd 0.03) whose class means differ by 0.1 per coordinate."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    if classes == 2:
        centres = torch.stack([torch.full((DIM,), 0.45), torch.full((DIM,), 0.55)])
    else:  # class c is raised by 0.1 on the coordinates i with i % classes == c
        centres = torch.full((classes, DIM), 0.45)
        for c in range(classes):
            centres[c, c::classes] += 0.1
    x = centres[y] + 0.03 * torch.randn((n, DIM), generator=g)
    return x.clamp(0.0, 1.0), y


def _train(classes: int, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(DIM, 32), nn.ReLU(), nn.Linear(32, classes))
    x, y = _blobs(512, classes, seed)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny nets: threads only add contention on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def net2() -> nn.Sequential:
    return _train(2)


@pytest.fixture(scope="module")
def net3() -> nn.Sequential:
    return _train(3, seed=1)


@pytest.fixture(scope="module")
def data2() -> tuple[torch.Tensor, torch.Tensor]:
    return _blobs(200, 2, seed=123)


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _independent_success(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Success = some other logit strictly above the true one (recomputed here by hand)."""
    with torch.no_grad():
        z = model(x)
    out = []
    for i in range(len(y)):
        out.append(any(z[i, j] > z[i, y[i]] for j in range(z.shape[1]) if j != y[i]))
    return torch.tensor(out)


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.05 * DIM**0.5)])
def test_pgd_accuracy_strictly_below_clean(net2, data2, norm, eps):
    x, y = data2
    clean = _accuracy(net2, x, y)
    assert clean > 0.9
    res = PGD(norm=norm, steps=20, restarts=2, device="cpu").run(net2, x, y, eps)
    robust = 1.0 - float(res.success.float().mean())
    assert robust < clean - 0.3
    # the success flags are re-checked on the returned points
    assert torch.equal(res.success, _independent_success(net2, res.x_adv, y))
    fg = fgsm(norm=norm, device="cpu").run(net2, x, y, eps)
    assert 1.0 - float(fg.success.float().mean()) < clean


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("loss", ["ce", "margin"])
@pytest.mark.parametrize("targeted", [False, True])
def test_points_within_eps_and_box(net3, norm, loss, targeted):
    x, y = _blobs(64, 3, seed=7)
    g = torch.Generator().manual_seed(3)
    # per-element box that contains x but cuts into the eps-ball on some coordinates
    lower = x - 0.02 * torch.rand(x.shape, generator=g)
    upper = x + 0.02 * torch.rand(x.shape, generator=g)
    eps = 0.05 if norm == "linf" else 0.3
    target = (y + 1) % 3 if targeted else None
    res = PGD(norm=norm, steps=15, restarts=2, loss=loss, device="cpu").run(
        net3, x, y, eps, lower, upper, target=target)
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype
    assert (distance(res.x_adv, x, norm) <= eps + 1e-7).all()
    d = (res.x_adv.double() - x.double())
    if norm == "linf":
        assert float(d.abs().max()) <= eps + 1e-7
    else:
        assert float(d.norm(dim=1).max()) <= eps + 1e-7
    assert (res.x_adv >= lower).all() and (res.x_adv <= upper).all()
    with torch.no_grad():
        z = net3(res.x_adv)
    label = target if targeted else y
    true = z.gather(1, label.view(-1, 1)).squeeze(1)
    other = z.scatter(1, label.view(-1, 1), float("-inf")).amax(1)
    expected_margin = true - other if targeted else other - true
    torch.testing.assert_close(res.best_margin, expected_margin)
    assert torch.equal(res.success, expected_margin > 0)


def test_unboxed_points_clip_to_unit_range(net2, data2):
    x, y = data2
    x = x.clone()
    x[:, :3] = 1.0  # on the upper edge: the attack may not leave [0, 1]
    for norm, eps in (("linf", 0.3), ("l2", 2.0)):
        res = PGD(norm=norm, steps=10, device="cpu").run(net2, x, y, eps, 0.0, 1.0)
        assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
        assert (distance(res.x_adv, x, norm) <= eps).all()


def test_linear_model_reaches_the_analytic_optimum():
    """For z = (0, w.x + b) the best L-inf margin is w.x + b + eps ||w||_1, L2: + eps ||w||_2."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(DIM, generator=g)
    lin = nn.Linear(DIM, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.stack([torch.zeros(DIM), w]))
        lin.bias.copy_(torch.tensor([0.0, -3.0]))
    x = torch.rand((16, DIM), generator=g)
    y = torch.zeros(16, dtype=torch.long)
    base = x @ w - 3.0
    # (L2 from a random start converges only slowly along the sphere, hence a clean start there)
    cases = (("linf", 0.1, w.abs().sum(), True), ("linf", 0.1, w.abs().sum(), False),
             ("l2", 0.5, w.norm(), False))
    for norm, eps, gain, random_start in cases:
        res = PGD(norm=norm, steps=30, loss="margin", early_stop=False,
                  random_start=random_start, device="cpu").run(lin, x, y, eps, -10.0, 10.0)
        torch.testing.assert_close(res.best_margin, base + eps * gain, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("eps", [0.045, 0.05, 0.055])
def test_margin_loss_finds_at_least_what_ce_finds(net3, eps):
    # Fixed seed, 3 restarts. (With 1 restart the two losses trade a sample or two either way:
    # the margin loss follows only the currently strongest wrong class.)
    x, y = _blobs(150, 3, seed=11)
    counts = {}
    for loss in ("ce", "margin"):
        res = PGD(norm="linf", steps=20, restarts=3, loss=loss, seed=5, device="cpu").run(
            net3, x, y, eps)
        counts[loss] = int(res.success.sum())
    assert 0 < counts["ce"] < len(y)  # a regime where the attack is neither trivial nor hopeless
    assert counts["margin"] >= counts["ce"]


def test_targeted_reaches_the_target(net3):
    x, y = _blobs(90, 3, seed=5)
    with torch.no_grad():
        keep = net3(x).argmax(1) == y
    x, y = x[keep], y[keep]
    target = (y + 2) % 3
    res = PGD(norm="linf", steps=30, restarts=2, loss="margin", device="cpu").run(
        net3, x, y, 0.15, target=target)
    assert res.success.float().mean() > 0.5
    with torch.no_grad():
        pred = net3(res.x_adv).argmax(1)
    assert torch.equal(pred[res.success], target[res.success])
    # the untargeted attack succeeds at least wherever the targeted one does
    unt = PGD(norm="linf", steps=30, restarts=2, loss="margin", device="cpu").run(net3, x, y, 0.15)
    assert bool((unt.success | ~res.success).all())


def test_eps_zero_returns_the_clean_points(net2, data2):
    x, y = data2
    res = PGD(device="cpu").run(net2, x, y, 0.0)
    assert torch.equal(res.x_adv, x)
    with torch.no_grad():
        assert torch.equal(res.success, net2(x).argmax(1) != y)


def test_seeded_runs_are_deterministic(net3):
    x, y = _blobs(40, 3, seed=2)
    a = PGD(norm="l2", steps=5, restarts=3, seed=9, early_stop=False, device="cpu").run(net3, x, y, 0.2)
    b = PGD(norm="l2", steps=5, restarts=3, seed=9, early_stop=False, device="cpu").run(net3, x, y, 0.2)
    assert torch.equal(a.x_adv, b.x_adv)


def test_bad_inputs_raise_input_error(net2, data2):
    x, y = data2
    with pytest.raises(InputError, match="norm"):
        PGD(norm="l1")
    with pytest.raises(InputError, match="loss"):
        PGD(loss="hinge")
    with pytest.raises(InputError, match="outside the valid range"):
        PGD(device="cpu").run(net2, x + 2.0, y, 0.1)
    with pytest.raises(InputError, match="eps"):
        PGD(device="cpu").run(net2, x, y, -0.1)
    with pytest.raises(InputError, match="labels"):
        PGD(device="cpu").run(net2, x, y[:5], 0.1)
    with pytest.raises(InputError, match="class indices"):
        PGD(device="cpu").run(net2, x, y + 5, 0.1)
    with pytest.raises(InputError, match="unknown attack"):
        make_attack("deepfool")


def test_attack_box_respects_per_element_bounds(net3):
    g = torch.Generator().manual_seed(4)
    centre = torch.rand((10, DIM), generator=g)
    half = 0.2 * torch.rand((10, DIM), generator=g)
    half[:, ::4] = 0.0  # some coordinates fixed
    lower, upper = centre - half, centre + half

    def objective(z: torch.Tensor) -> torch.Tensor:
        return z[:, 2] - torch.maximum(z[:, 0], z[:, 1])

    xb, vb = attack_box(net3, lower, upper, objective, steps=30, restarts=3, seed=1, device="cpu")
    assert (xb >= lower).all() and (xb <= upper).all()
    with torch.no_grad():
        torch.testing.assert_close(vb, objective(net3(xb)))
        at_centre = objective(net3(centre))
        samples = lower + torch.rand((200, 10, DIM), generator=g) * (upper - lower)
        random_best = objective(net3(samples.view(-1, DIM))).view(200, 10).amax(0)
    assert (vb >= at_centre - 1e-6).all()
    assert (vb >= random_best - 1e-5).all()
    xb2, vb2 = attack_box(net3, lower, upper, objective, steps=30, restarts=3, seed=1, device="cpu")
    assert torch.equal(xb, xb2) and torch.equal(vb, vb2)
    with pytest.raises(InputError, match="empty"):
        attack_box(net3, upper + 1.0, upper, objective, device="cpu")
    # step fractions cycled over restarts: still inside the box, never worse than the centre
    xc, vc = attack_box(net3, lower, upper, objective, steps=30, restarts=3, seed=1, device="cpu",
                        step_fraction=(0.1, 1.0))
    assert (xc >= lower).all() and (xc <= upper).all() and (vc >= at_centre - 1e-6).all()
    for bad in ((), (0.1, 0.0), -1.0):
        with pytest.raises(InputError, match="step fractions"):
            attack_box(net3, lower, upper, objective, device="cpu", step_fraction=bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_pgd_on_cuda_matches_the_contract(net2, data2):
    x, y = data2
    model = _train(2)
    res = PGD(norm="linf", steps=10, device="cuda").run(model, x, y, 0.05)
    assert res.x_adv.device == x.device  # results come back on the input's device
    assert (distance(res.x_adv, x, "linf") <= 0.05).all()
    cpu = PGD(norm="linf", steps=10, device="cpu").run(model.cpu(), x, y, 0.05)
    assert abs(int(res.success.sum()) - int(cpu.success.sum())) <= 2


def test_device_auto_never_moves_the_callers_model(net2, data2):
    x, y = data2
    before = next(net2.parameters()).device
    res = PGD(steps=3, device="auto").run(net2, x, y, 0.05)
    assert next(net2.parameters()).device == before
    assert res.x_adv.device == x.device
    with pytest.raises(InputError, match="device"):
        PGD(device="tpu:7").run(net2, x, y, 0.05)


def test_attack_command_on_an_exported_model(tmp_path, capsys):
    onnxruntime = pytest.importorskip("onnxruntime")
    from robustkit.cli.attack import evaluate_attack
    from robustkit.cli.main import main
    from robustkit.data import embedded_subset
    from robustkit.onnx_export import export_onnx
    from robustkit.nets import NetConfig, build_net

    torch.manual_seed(0)
    model = build_net(NetConfig("mlp", (1, 28, 28), hidden=(16,))).eval()
    path = export_onnx(model, tmp_path / "tiny.onnx", {"robustkit.dataset": "mnist"},
                       input_shape=(1, 28, 28))
    summary = evaluate_attack(path, 0.05, steps=5, restarts=1, n=30, device="cpu")
    ds = embedded_subset("mnist").head(30)
    sess = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: ds.images.numpy()})[0]
    assert summary.n == 30
    assert summary.clean_accuracy == pytest.approx(float((logits.argmax(1) == ds.labels.numpy()).mean()))
    assert summary.pgd_accuracy <= summary.clean_accuracy
    # eps is printed as the fraction it was given (issue 38); --steps/--restarts are the old,
    # deprecated spellings of --attack-steps/--attack-restarts
    assert main(["attack", str(path), "--eps", "8/255", "--steps", "2", "--restarts", "1",
                 "--n", "10", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "| tiny.onnx | mnist | 10 | 8/255 | linf |" in captured.out
    assert "--steps is deprecated; use --attack-steps" in captured.err
    assert main(["attack", str(path), "--eps", "8/255", "--attack-steps", "2", "--attack-restarts", "1",
                 "--n", "10", "--device", "cpu"]) == 0
    again = capsys.readouterr()
    def cells(out: str) -> list[str]:  # the row without its time column
        return out.splitlines()[-1].split("|")[1:-2]

    assert cells(again.out) == cells(captured.out)  # the alias means the same option
    assert "deprecated" not in again.err
    assert main(["attack", str(path), "--eps", "lots", "--n", "10"]) == 1
    assert main(["attack", str(tmp_path / "missing.onnx"), "--eps", "0.1"]) == 1
    assert main(["attack", str(path), "--eps", "0.1", "--norm", "l1", "--n", "5"]) == 1


def test_minimal_distortion_matches_the_linear_optimum():
    """For z = (0, w.x + b) with w.x + b < 0 the smallest L2 flip is -(w.x + b) / ||w||_2, and
    the smallest L-inf flip -(w.x + b) / ||w||_1 (inside a box wide enough not to interfere)."""
    from robustkit.attacks.distortion import minimal_distortion

    g = torch.Generator().manual_seed(3)
    w = torch.randn(DIM, generator=g)
    lin = nn.Linear(DIM, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.stack([torch.zeros(DIM), w]))
        lin.bias.copy_(torch.tensor([0.0, -2.0]))
    x = torch.rand((12, DIM), generator=g) * 0.1
    y = torch.zeros(12, dtype=torch.long)
    gap = -(x @ w - 2.0)
    assert (gap > 0).all()
    for norm, dual in (("l2", w.norm()), ("linf", w.abs().sum())):
        attack = PGD(norm=norm, steps=30, loss="margin", random_start=False, device="cpu")
        res = minimal_distortion(attack, lin, x, y, max_eps=50.0, lower=-100.0, upper=100.0, iterations=14)
        true = (gap / dual).double()
        assert res.broken.all()
        # an upper bound (the witness flips the class) within the bisection tolerance 50 / 2^14
        assert (res.radius >= true - 1e-4).all()
        torch.testing.assert_close(res.radius, true, atol=50 / 2**14 + 1e-3, rtol=0)
        with torch.no_grad():
            assert (lin(res.x_adv).argmax(1) == 1).all()


def test_minimal_distortion_censors_and_zeroes(net2, data2):
    from robustkit.attacks.distortion import median_or_nan, minimal_distortion

    x, y = data2
    attack = PGD(norm="l2", steps=20, device="cpu")
    with torch.no_grad():
        wrong = net2(x).argmax(1) != y
    tiny = minimal_distortion(attack, net2, x, y, max_eps=1e-4, iterations=3)
    # at a radius this small nothing correctly classified breaks: censored, never max_eps
    assert torch.isinf(tiny.radius[~wrong]).all()
    assert (tiny.radius[wrong] == 0).all()
    assert tiny.summary()["not_broken"] == int((~wrong).sum())
    assert torch.equal(tiny.misclassified, wrong)
    full = minimal_distortion(attack, net2, x, y, max_eps=2.0, iterations=6)
    assert full.broken.all()
    d = distance(full.x_adv, x, "l2")
    assert (d <= 2.0 + 1e-5).all() and (full.radius.float() - d).abs().max() < 1e-5
    with torch.no_grad():
        assert (net2(full.x_adv).argmax(1) != y).all()
    summary = full.summary()
    assert summary["n_correct"] == int((~wrong).sum()) > 0
    assert summary["median_correct"] == float(full.radius[~wrong].median()) > 0
    assert summary["median"] == float(full.radius.median())
    with pytest.raises(InputError):
        minimal_distortion(attack, net2, x, y, max_eps=-1.0)
    assert math.isnan(median_or_nan(torch.zeros(0)))


def test_distortion_median_of_correct_ignores_the_misclassified(net2, data2):
    """Gu & Rigazio average over adversarial examples of correctly classified samples: with most
    samples misclassified the median over all is 0, the median over the correct ones is not."""
    from robustkit.attacks.distortion import minimal_distortion

    x, y = data2
    with torch.no_grad():
        pred = net2(x).argmax(1)
    keep = torch.nonzero(pred == y).flatten()[:3]
    lie = torch.nonzero(pred != y).flatten()
    if lie.numel() < 4:  # make misclassified samples: relabel correct ones
        lie = torch.nonzero(pred == y).flatten()[3:10]
        y = y.clone()
        y[lie] = (pred[lie] + 1) % 10
    idx = torch.cat([keep, lie])
    res = minimal_distortion(PGD(norm="l2", steps=20, device="cpu"), net2, x[idx], y[idx], max_eps=2.0, iterations=5)
    s = res.summary()
    assert s["n_correct"] == keep.numel() and s["median"] == 0.0
    assert s["median_correct"] > 0 and s["median_correct"] == float(res.radius[:keep.numel()].median())


def _flat_region_net():
    """``y = 0.1 - relu(1 - 200 relu(x - 0.5))`` on ``x in [-1, 0.51]``: violated (``y >= 0``)
    only for ``x >= 0.5045``; below 0.5 the first ReLU is off and the true gradient is zero."""
    from robustkit.network import Network
    from robustkit.network import Dense, ReLU

    t = lambda *v: torch.tensor(v, dtype=torch.float32).reshape(len(v), -1)  # noqa: E731
    layers = (Dense(t(1.0), torch.tensor([-0.5])), ReLU(1), Dense(t(-200.0), torch.tensor([1.0])), ReLU(1),
              Dense(t(-1.0), torch.tensor([0.1])))
    return Network(layers, (1,), (1, 1))


def test_surrogate_gradient_crosses_a_region_where_relus_are_off():
    net = _flat_region_net()
    exact, leaky = net.to_torch(), net.to_torch(relu_grad_slope=0.01)
    x = torch.linspace(-1, 0.51, 301).reshape(-1, 1)
    assert torch.equal(exact(x), leaky(x))  # same function, only the gradient differs
    xg = torch.tensor([[-0.2]], requires_grad=True)
    (g_exact,) = torch.autograd.grad(exact(xg).sum(), xg)
    (g_leaky,) = torch.autograd.grad(leaky(xg).sum(), xg)
    assert float(g_exact) == 0.0 and float(g_leaky) == pytest.approx(200 * 0.01)
    lo, hi = torch.tensor([[-1.0]]), torch.tensor([[0.51]])
    objective = lambda y: y[:, 0]  # noqa: E731
    _, v_exact = attack_box(exact, lo, hi, objective, steps=30, restarts=4, seed=0, step_fraction=0.1)
    assert float(v_exact) < 0  # stalls: from the centre and the random starts the gradient is 0
    xs, vs = attack_box(exact, lo, hi, objective, steps=30, restarts=4, seed=0, step_fraction=0.1,
                        surrogates=(None, leaky))
    assert float(vs) >= 0 and 0.5045 <= float(xs) <= 0.51
    assert float(vs) == pytest.approx(float(objective(exact(xs))))  # value of the true model
    with pytest.raises(InputError, match="surrogates"):
        attack_box(exact, lo, hi, objective, surrogates=())
    with pytest.raises(ValueError, match="relu_grad_slope"):
        net.to_torch(relu_grad_slope=-0.1)
