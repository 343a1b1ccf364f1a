"""V-MPO: top-k E-step with a dual temperature, weighted NLL, and a Lagrangian KL trust region.

Source: Song et al. 2019 (arXiv:1909.12238) eq. 2–5 and App. (decoupled Gaussian KL);
`[EM-SFT] §5` (L_π + L_η + L_α, eq. 1) and §6 (top-k, log-sum-exp dual,
softplus parameterisation, the full adaptive procedure); `[EM-LLM] §10`
(GEMPI tuple: m = 1, π_1 = π_t, λ_1 = η dual, top-k, D_M = KL with dual α). Over one batch of N samples:

    S = top-k of A (k = floor(N/2)),   ψ_i = exp(A_i/η) / Σ_{j∈S} exp(A_j/η)  (i ∈ S)
    L_η = η ε_η + η log( (1/k) Σ_{i∈S} exp(A_i/η) )                     (top-k set only)
    L_π = −Σ_{i∈S} ψ_i log π_θ(a_i|s_i)
    L_α = α (ε_α − sg[KL]) + sg[α] KL,   KL = mean_s KL(π_old(·|s) ‖ π_θ(·|s))   (whole batch)

For Gaussian policies the KL is split into a mean part (covariance held at Σ_old) and a covariance part
(mean held at μ_old), each with its own α (α_μ, α_Σ) and bound (ε_αμ, ε_αΣ). As in rlax, the pieces are
separate functions (`vmpo_estep`, `vmpo_policy_loss`, `vmpo_kl_loss` / `vmpo_gaussian_kl_loss`) and
`vmpo_loss` / `vmpo_gaussian_loss` add them up. Duals are softplus(raw) + 1e-8 (initial η = 1; α = 5
discrete, α_μ = α_Σ = 1 Gaussian; docs/reference-settings.md).

Deviations: the per-run log-uniform sampling of ε_α (the paper's sweep) is left to the suite's grids; the
`Batch` carries one KL, so the decoupled Gaussian variant goes through `VMPO.loss_decoupled`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from algorithms.base import Batch, Method, Metrics, Needs, dual_parameter, register
from algorithms.common import kl_categorical, kl_diag_gaussian
from algorithms.config import check_choices, check_positive, check_range, field
from algorithms.estep import estep, kl_to_uniform
from algorithms.gempi import DUAL_FLOOR, GEMPIConfig, masked_trust_region
from algorithms.mstep import weighted_nll


@dataclass(frozen=True)
class VMPOConfig:
    eta: float = field(1.0, "initial temperature η (softplus dual); V-MPO: 1")
    epsilon_eta: float = field(0.01, "E-step KL bound ε_η; V-MPO: 0.01 state control, 0.02 Atari, 0.1 DMLab")
    topk_frac: float = field(0.5, "fraction ρ of the batch kept by top-k (k = floor(ρN), ≥ 1); V-MPO: 0.5")
    kl_split: Literal["joint", "decoupled"] = field(
        "joint", "one α on the whole KL (categorical) or α_μ, α_Σ on a Gaussian's mean / covariance KL")
    alpha: float = field(5.0, "initial α of the joint trust region; V-MPO discrete: 5")
    epsilon_alpha: float = field(0.01, "joint trust-region bound ε_α; V-MPO samples it log-uniformly in [0.005, 0.01]")
    alpha_mu: float = field(1.0, "initial α_μ (decoupled); V-MPO Gaussian: 1")
    alpha_sigma: float = field(1.0, "initial α_Σ (decoupled); V-MPO Gaussian: 1")
    epsilon_alpha_mu: float = field(0.01, "mean-KL bound ε_αμ; V-MPO samples it in [0.005, 0.01]")
    epsilon_alpha_sigma: float = field(1e-5, "covariance-KL bound ε_αΣ; V-MPO samples it in [5e-6, 5e-5]")

    def __post_init__(self):
        check_choices(self)
        check_positive(self, "eta", "epsilon_eta", "alpha", "epsilon_alpha", "alpha_mu", "alpha_sigma", "epsilon_alpha_mu",
                       "epsilon_alpha_sigma")
        check_range(self, "topk_frac", 0.0, 1.0, lo_open=True)

    def to_gempi(self) -> GEMPIConfig:
        joint = self.kl_split == "joint"
        return GEMPIConfig(anchors=("pi_t",), coefficients=(self.eta,), coefficient_names=("eta",), temperature="dual",
                           epsilons=(self.epsilon_eta,), dual_over="batch", filter="topk", topk_frac=self.topk_frac,
                           topk_over="batch", topk_by="advantage", normalize="batch", weight_clip=None, advantage_norm="none",
                           m_step="constraint", m_kl="old",
                           m_coef=(self.alpha,) if joint else (self.alpha_mu, self.alpha_sigma),
                           m_epsilon=(self.epsilon_alpha,) if joint else (self.epsilon_alpha_mu, self.epsilon_alpha_sigma))


# ------------------------------------------------------------------------------------------------
# Pieces
# ------------------------------------------------------------------------------------------------


def vmpo_estep(advantage: Tensor, mask: Tensor, eta: Tensor, *, epsilon_eta: float,
               topk_frac: float) -> tuple[Tensor, Tensor, Metrics]:
    """E-step: top-k weights normalised over the top-k set of the batch, and the temperature loss L_η.

    Args:
        advantage: [B, K] advantages (detached inside). mask: [B, K] valid samples.
        eta: scalar η > 0 (softplus'd dual). epsilon_eta: ε_η. topk_frac: ρ (0.5 in V-MPO).

    Returns: log_w [B, K] (detached, summing to 1 over the batch's top-k, -inf elsewhere), L_η (gradient to η
        only, on the top-k set), metrics `weights/ess`, `weights/ess_frac`, `weights/max`, `dual/eta`,
        `dual/eta_loss`, `weights/kl` (KL of the weights to uniform on the top-k set: what ε_η bounds).
    Deviations: top-k ties go to the lower flat index (`common.top_k_mask`); k = max(1, floor(ρ·N_valid)).
    """
    log_w, eta_loss, metrics = estep(advantage, mask, eta, over="batch", topk_frac=topk_frac, epsilon=epsilon_eta)
    metrics["dual/eta_loss"] = eta_loss.detach()
    metrics["weights/kl"] = kl_to_uniform(log_w, torch.isfinite(log_w).to(log_w.dtype), over="batch")
    return log_w, eta_loss, metrics


def vmpo_policy_loss(logp: Tensor, log_w: Tensor) -> tuple[Tensor, Metrics]:
    """L_π = −Σ_i ψ_i log π_θ(a_i|s_i) with ψ from `vmpo_estep` (normalised over the batch). Returns `policy/nll`.

    Args: logp [B, K] differentiable; log_w [B, K] detached log ψ (-inf outside the top-k set). Deviations: none.
    """
    nll = weighted_nll(logp, log_w, reduction="sum")
    return nll, {"policy/nll": nll.detach()}


def vmpo_kl_loss(kl: Tensor, mask: Tensor, alpha: Tensor, *, epsilon_alpha: float) -> tuple[Tensor, Metrics]:
    """L_α = α(ε_α − sg[KL]) + sg[α]·KL, KL the mean over contexts with any valid sample of `kl` [B].

    `kl` is KL(π_old‖π_θ) per context, differentiable in θ (categorical: `categorical_kl_old`); `mask` [B, K];
    `alpha` the softplus'd dual. Returns: loss, metrics `dual/alpha`, `kl/old`.
    Deviations: contexts without a valid sample (padding) are left out of the mean.
    """
    loss, m = masked_trust_region(kl, mask, alpha, epsilon_alpha, name="alpha")
    return loss, {"dual/alpha": m["dual/alpha"], "kl/old": m["kl/alpha_trust_region"]}


def categorical_kl_old(logits_old: Tensor, logits: Tensor) -> Tensor:
    """KL(π_old ‖ π_θ) for categorical policies, [..., C] -> [...]; the old logits are detached."""
    return kl_categorical(logits_old.detach(), logits)


def decoupled_gaussian_kl(mu_old: Tensor, std_old: Tensor, mu: Tensor, std: Tensor) -> tuple[Tensor, Tensor]:
    """Decoupled KL(π_old‖π_θ) of diagonal Gaussians [..., A] -> ([...], [...]) (Song et al. 2019, App.).

        KL_μ = KL(N(μ_old, Σ_old) ‖ N(μ, Σ_old)) = Σ_d (μ − μ_old)² / (2σ_old²)           (gradient to μ only)
        KL_Σ = KL(N(μ_old, Σ_old) ‖ N(μ_old, Σ)) = Σ_d log σ/σ_old + σ_old²/(2σ²) − 1/2   (gradient to σ only)

    The old parameters are detached. KL_μ + KL_Σ is the full KL when σ = σ_old or μ = μ_old.
    """
    mu_old, log_std_old = mu_old.detach(), std_old.detach().log()
    kl_mean = kl_diag_gaussian(mu_old, log_std_old, mu, log_std_old)
    kl_cov = kl_diag_gaussian(mu_old, log_std_old, mu_old, std.log())
    return kl_mean, kl_cov


def vmpo_gaussian_kl_loss(kl_mean: Tensor, kl_cov: Tensor, mask: Tensor, alpha_mu: Tensor, alpha_sigma: Tensor, *,
                          epsilon_alpha_mu: float, epsilon_alpha_sigma: float) -> tuple[Tensor, Metrics]:
    """Two trust regions: α_μ on the mean KL, α_Σ on the covariance KL ([B] each, over contexts with samples).

    Returns: loss, metrics `dual/alpha_mu`, `dual/alpha_sigma`, `kl/mean`, `kl/cov`. Deviations: none.
    """
    l_mu, m_mu = masked_trust_region(kl_mean, mask, alpha_mu, epsilon_alpha_mu, name="alpha_mu")
    l_sig, m_sig = masked_trust_region(kl_cov, mask, alpha_sigma, epsilon_alpha_sigma, name="alpha_sigma")
    metrics = {"dual/alpha_mu": m_mu["dual/alpha_mu"], "dual/alpha_sigma": m_sig["dual/alpha_sigma"],
               "kl/mean": m_mu["kl/alpha_mu_trust_region"], "kl/cov": m_sig["kl/alpha_sigma_trust_region"]}
    return l_mu + l_sig, metrics


# ------------------------------------------------------------------------------------------------
# Combined
# ------------------------------------------------------------------------------------------------


def vmpo_loss(advantage: Tensor, mask: Tensor, logp: Tensor, kl_old: Tensor, eta: Tensor, alpha: Tensor, *,
              epsilon_eta: float, epsilon_alpha: float, topk_frac: float) -> tuple[Tensor, Metrics]:
    """L_π + L_η + L_α with one trust region on the whole KL (categorical policies).

    Args:
        advantage: [B, K] A (e.g. n-step return − V(s)). mask: [B, K]. logp: [B, K] log π_θ, differentiable.
        kl_old: [B] KL(π_old‖π_θ), differentiable. eta, alpha: scalar softplus'd duals.
        epsilon_eta, epsilon_alpha, topk_frac: see `VMPOConfig`.

    Returns: loss, metrics of the three pieces (`policy/nll`, `weights/*`, `dual/eta`, `dual/eta_loss`,
        `dual/alpha`, `kl/old`).
    Deviations: the critic loss L_V is not included (the task's value loss); advantages are used as given.
    """
    log_w, eta_loss, metrics = vmpo_estep(advantage, mask, eta, epsilon_eta=epsilon_eta, topk_frac=topk_frac)
    pi_loss, pm = vmpo_policy_loss(logp, log_w)
    kl_loss, km = vmpo_kl_loss(kl_old, mask, alpha, epsilon_alpha=epsilon_alpha)
    return pi_loss + eta_loss + kl_loss, {**metrics, **pm, **km}


def vmpo_gaussian_loss(advantage: Tensor, mask: Tensor, logp: Tensor, kl_mean: Tensor, kl_cov: Tensor, eta: Tensor,
                       alpha_mu: Tensor, alpha_sigma: Tensor, *, epsilon_eta: float, epsilon_alpha_mu: float,
                       epsilon_alpha_sigma: float, topk_frac: float) -> tuple[Tensor, Metrics]:
    """L_π + L_η + L_αμ + L_αΣ for Gaussian policies; `kl_mean`, `kl_cov` [B] from `decoupled_gaussian_kl`.

    Returns: loss, metrics as `vmpo_loss` with `dual/alpha_mu`, `dual/alpha_sigma`, `kl/mean`, `kl/cov`.
    Deviations: as `vmpo_loss`.
    """
    log_w, eta_loss, metrics = vmpo_estep(advantage, mask, eta, epsilon_eta=epsilon_eta, topk_frac=topk_frac)
    pi_loss, pm = vmpo_policy_loss(logp, log_w)
    kl_loss, km = vmpo_gaussian_kl_loss(kl_mean, kl_cov, mask, alpha_mu, alpha_sigma,
                                        epsilon_alpha_mu=epsilon_alpha_mu, epsilon_alpha_sigma=epsilon_alpha_sigma)
    return pi_loss + eta_loss + kl_loss, {**metrics, **pm, **km}


@register
class VMPO(Method):
    """Adaptor from a `Batch`: `score` is the advantage, `kl_old` the joint KL; decoupled KLs via `loss_decoupled`."""

    name = "vmpo"
    Config = VMPOConfig
    needs = Needs(kl_old=True)
    GEMPI: ClassVar[GEMPIConfig] = VMPOConfig().to_gempi()

    def __init__(self, cfg: VMPOConfig):
        super().__init__(cfg)
        self.eta_raw = dual_parameter(cfg.eta, DUAL_FLOOR)
        if cfg.kl_split == "joint":
            self.alpha_raw = dual_parameter(cfg.alpha, DUAL_FLOOR)
        else:
            self.alpha_mu_raw = dual_parameter(cfg.alpha_mu, DUAL_FLOOR)
            self.alpha_sigma_raw = dual_parameter(cfg.alpha_sigma, DUAL_FLOOR)

    @staticmethod
    def _dual(raw: Tensor) -> Tensor:
        return F.softplus(raw) + DUAL_FLOOR

    def loss(self, batch: Batch) -> tuple[Tensor, Metrics]:
        c = self.cfg
        if c.kl_split == "decoupled":
            raise ValueError("VMPO with kl_split='decoupled' needs the mean and covariance KLs, which Batch does not carry: "
                             "call loss_decoupled(batch, kl_mean, kl_cov) with parts from decoupled_gaussian_kl")
        return vmpo_loss(batch.score, batch.mask, batch.logp, batch.kl_old, self._dual(self.eta_raw), self._dual(self.alpha_raw),
                         epsilon_eta=c.epsilon_eta, epsilon_alpha=c.epsilon_alpha, topk_frac=c.topk_frac)

    def loss_decoupled(self, batch: Batch, kl_mean: Tensor, kl_cov: Tensor) -> tuple[Tensor, Metrics]:
        c = self.cfg
        if c.kl_split != "decoupled":
            raise ValueError("loss_decoupled needs kl_split='decoupled'")
        return vmpo_gaussian_loss(batch.score, batch.mask, batch.logp, kl_mean, kl_cov, self._dual(self.eta_raw),
                                  self._dual(self.alpha_mu_raw), self._dual(self.alpha_sigma_raw), epsilon_eta=c.epsilon_eta,
                                  epsilon_alpha_mu=c.epsilon_alpha_mu, epsilon_alpha_sigma=c.epsilon_alpha_sigma,
                                  topk_frac=c.topk_frac)
