"""Manifold Adversarial Training, MAT (Zhang, Huang, Zhu, Liu, "Manifold Adversarial Learning").

Latent space (Sec. III-D, Eq. 2): the last hidden layer ``z`` is modelled by a Gaussian mixture
with one component per class, ``p(z | k) = N(z; mu_k, Sigma_k)`` and uniform priors ``1/K``.
Sec. III-I: the means and covariances are estimated from the latent features of the *labelled*
data, not by gradient descent; the covariance may be taken diagonal in high dimension. Here
(Algorithm 1, line 10) they are exponential moving averages of per-class batch statistics
(``gmm_rate``), with a variance floor for stability.

Information regularizer (Sec. III-D): maximising the mutual information ``I(y; z)`` amounts to
maximising ``log p(y | z)``; the paper drops the log-marginal as a normaliser and keeps
``log p(z | y)``. ``information="likelihood"`` (default) penalises ``-log N(z; mu_y, Sigma_y)``;
Proposition III.1: with identity covariance this is the center loss of Wen et al.
``0.5 ||z - mu_y||^2`` plus the constant ``(D/2) log 2 pi``. ``information="posterior"`` keeps the
normaliser: ``-log p(y | z)`` under the mixture posterior.

Smoothness (Sec. III-F, Eq. for R_m, R_o and their sum): the KL divergence between the mixture
posteriors ``p(k | z(x))`` and ``p(k | z(x + r))`` (manifold smoothness) plus the KL between the
output distributions (VAT's output smoothness), at the worst perturbation ``r`` of L2 norm
``eps``. Sec. III-H, Theorem III.4: ``r = eps * d`` with ``d`` the dominant eigenvector of the
Hessian of the divergence, found by the power method (random unit ``d``, gradient at ``xi d``,
normalise; one iteration as in VAT, Sec. III-I). The clean side of every KL is held constant
(VAT). Final objective (Sec. III-G): ``CE + weight * (R_m + R_o) + info_weight * R_info``.
For the manifold KL the posteriors use identity covariances (``smooth_covariance="identity"``,
default): Sec. III-H computes the divergence between mixtures "assuming an identity matrix";
``"model"`` uses the estimated (diagonal) covariances instead, which makes the posterior far
sharper and, in our MNIST runs, lets the smoothness term collapse the latent space.

Semi-supervised mode (Sec. IV-A2): samples with label ``< 0`` are unlabelled and contribute only
to the smoothness term; the GMM statistics and the information term use labelled samples only.

The paper's hyper-parameter values did not survive text extraction; the defaults (eps = 2 as
VAT on MNIST, xi = 1e-3 for float32 accuracy of the finite difference, weight = 0.1,
info_weight = 0.01) are robustkit's choices (weight = 1 drove the ``small`` net on MNIST below
80% accuracy within 100 steps; 0.1 keeps it near the plain-training accuracy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from robustkit.errors import InputError
from robustkit.network.passes import Activations, forward_with_activations
from robustkit.regularizers.base import RegOutput, Regularizer, ScheduleState
from robustkit.regularizers.options import require_choice, require_nonneg, require_positive
from robustkit.regularizers.perturb import clip_to_range, power_iteration


@dataclass(frozen=True)
class MATConfig:
    """``weight``: factor of the smoothness ``R_m + R_o``; ``info_weight``: factor of the
    information term; ``eps``/``xi``/``power_iterations``: the perturbation (Theorem III.4)."""

    weight: float = 0.1
    info_weight: float = 0.01
    eps: float = 2.0
    xi: float = 1e-3
    power_iterations: int = 1
    covariance: Literal["diagonal", "identity"] = "diagonal"
    smooth_covariance: Literal["identity", "model"] = "identity"
    information: Literal["likelihood", "posterior"] = "likelihood"
    gmm_rate: float = 0.1
    var_floor: float = 1e-2
    semi_supervised: bool = False
    clip: bool = False

    def __post_init__(self) -> None:
        require_nonneg("mat", weight=self.weight, info_weight=self.info_weight, eps=self.eps)
        require_positive("mat", xi=self.xi, var_floor=self.var_floor)
        if not 0 < self.gmm_rate <= 1:
            raise InputError(f"mat: gmm_rate must be in (0, 1], got {self.gmm_rate}")
        if self.power_iterations < 1:
            raise InputError(f"mat: power_iterations must be >= 1, got {self.power_iterations}")
        require_choice("mat", "covariance", self.covariance, ("diagonal", "identity"))
        require_choice("mat", "smooth_covariance", self.smooth_covariance, ("identity", "model"))
        require_choice("mat", "information", self.information, ("likelihood", "posterior"))


class ClassGaussianMixture:
    """One diagonal Gaussian per class, uniform priors; statistics as moving averages."""

    def __init__(self, num_classes: int, covariance: str = "diagonal", rate: float = 0.1, var_floor: float = 1e-2) -> None:
        self.num_classes = num_classes
        self.covariance = covariance
        self.rate = rate
        self.var_floor = var_floor
        self.means: torch.Tensor | None = None
        self.variances: torch.Tensor | None = None

    @property
    def ready(self) -> bool:
        return self.means is not None

    def _vars(self, identity: bool = False) -> torch.Tensor:
        assert self.means is not None and self.variances is not None
        if identity or self.covariance == "identity":
            return torch.ones_like(self.means)
        return self.variances

    def component_log_density(self, z: torch.Tensor, identity: bool = False) -> torch.Tensor:
        """``log N(z; mu_k, Sigma_k)`` for every sample and class, shape ``(B, K)``
        (``identity=True``: with ``Sigma_k = I`` whatever the mixture's covariance)."""
        if self.means is None:
            raise RuntimeError("the mixture has no statistics yet; call update() first")
        var = self._vars(identity)
        diff = z.unsqueeze(1) - self.means.unsqueeze(0)  # (B, K, D)
        maha = (diff.pow(2) / var.unsqueeze(0)).sum(dim=2)
        log_det = var.log().sum(dim=1)  # (K,)
        return -0.5 * (maha + log_det.unsqueeze(0) + z.shape[1] * math.log(2 * math.pi))

    def log_posterior(self, z: torch.Tensor, identity: bool = False) -> torch.Tensor:
        """``log p(k | z)`` with uniform priors (they cancel), shape ``(B, K)``."""
        return torch.log_softmax(self.component_log_density(z, identity), dim=1)

    @torch.no_grad()
    def update(self, z: torch.Tensor, y: torch.Tensor) -> None:
        """Moving-average update from labelled features (first call: initialise)."""
        z = z.detach()
        if z.shape[0] == 0:
            return
        k, d = self.num_classes, z.shape[1]
        onehot = F.one_hot(y, k).to(z.dtype)  # (B, K)
        counts = onehot.sum(dim=0)  # (K,)
        present = counts > 0
        sums = onehot.t() @ z
        batch_means = sums / counts.clamp_min(1).unsqueeze(1)
        sq = onehot.t() @ z.pow(2)
        batch_vars = (sq / counts.clamp_min(1).unsqueeze(1) - batch_means.pow(2)).clamp_min(0)
        if self.means is None or self.variances is None:
            overall_mean = z.mean(dim=0)
            overall_var = z.var(dim=0, unbiased=False)
            self.means = torch.where(present.unsqueeze(1), batch_means, overall_mean.expand(k, d)).clone()
            init_var = torch.where((counts > 1).unsqueeze(1), batch_vars, overall_var.expand(k, d))
            self.variances = init_var.clamp_min(self.var_floor).clone()
            return
        r = self.rate
        upd = present.unsqueeze(1)
        self.means = torch.where(upd, (1 - r) * self.means + r * batch_means, self.means)
        self.variances = torch.where(
            upd, ((1 - r) * self.variances + r * batch_vars).clamp_min(self.var_floor), self.variances
        )


def categorical_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Per-sample ``KL(p || q)`` from log-probabilities, shape ``(B,)``."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


class MAT(Regularizer):
    """Information (GMM) + latent and output smoothness at the power-iteration perturbation."""

    name = "mat"
    paper = "Zhang, Huang, Zhu, Liu, Manifold Adversarial Learning, Sec. III-D (Eq. 2, Prop. III.1), III-F, III-G, III-H (Thm. III.4)"
    summary = "class-GMM information term + KL smoothness of mixture posteriors and outputs at the power-iteration perturbation"
    terms = ("mat_info", "mat_smooth")
    config_cls = MATConfig
    config: MATConfig

    def __init__(self, config: MATConfig | None = None) -> None:
        super().__init__(config)
        self.gmm: ClassGaussianMixture | None = None

    def _mixture(self, num_classes: int) -> ClassGaussianMixture:
        cfg = self.config
        if self.gmm is None or self.gmm.num_classes != num_classes:
            self.gmm = ClassGaussianMixture(num_classes, cfg.covariance, cfg.gmm_rate, cfg.var_floor)
        return self.gmm

    def information_term(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample information penalty (``-log p(z|y)`` or ``-log p(y|z)``), shape ``(B,)``."""
        assert self.gmm is not None
        if self.config.information == "likelihood":
            return -self.gmm.component_log_density(z).gather(1, y.view(-1, 1)).squeeze(1)
        return -self.gmm.log_posterior(z).gather(1, y.view(-1, 1)).squeeze(1)

    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        state: ScheduleState,
        clean: Activations,
    ) -> RegOutput:
        cfg = self.config
        out = RegOutput()
        z = clean.last_hidden
        gmm = self._mixture(clean.logits.shape[1])
        labelled = y >= 0 if cfg.semi_supervised else torch.ones_like(y, dtype=torch.bool)
        fresh = not gmm.ready
        if fresh:
            if not bool(labelled.any()):
                return out  # nothing to estimate the mixture from yet
            gmm.update(z[labelled], y[labelled])

        if cfg.info_weight > 0 and bool(labelled.any()):
            info = self.information_term(z[labelled], y[labelled]).mean()
            out.terms["mat_info"] = cfg.info_weight * info
            out.metrics["mat_info_raw"] = float(info.detach())

        if cfg.weight > 0 and cfg.eps > 0:
            ident = cfg.smooth_covariance == "identity"
            lat_p = gmm.log_posterior(z.detach(), ident).detach()
            out_p = torch.log_softmax(clean.logits.detach(), dim=1)

            def divergences(r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                x_r = x.detach() + r
                if cfg.clip:
                    x_r = clip_to_range(x_r, state.input_range)
                acts = forward_with_activations(clean.network, x_r)
                kl_lat = categorical_kl(lat_p, gmm.log_posterior(acts.last_hidden, ident))
                kl_out = categorical_kl(out_p, torch.log_softmax(acts.logits, dim=1))
                return kl_lat, kl_out

            def total_divergence(r: torch.Tensor) -> torch.Tensor:
                kl_lat, kl_out = divergences(r)
                return (kl_lat + kl_out).sum()

            d = power_iteration(
                total_divergence,
                torch.randn_like(x),
                cfg.xi,
                cfg.power_iterations,
            )
            kl_lat, kl_out = divergences(cfg.eps * d)
            smooth = kl_lat.mean() + kl_out.mean()
            out.terms["mat_smooth"] = cfg.weight * smooth
            out.metrics["mat_latent_kl"] = float(kl_lat.mean().detach())
            out.metrics["mat_output_kl"] = float(kl_out.mean().detach())

        if not fresh and bool(labelled.any()):
            gmm.update(z[labelled], y[labelled])  # Algorithm 1, line 10: after the loss
        return out
