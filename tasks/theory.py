"""Theory checks T1–T12: exact identities and rates on random finite instances, as a task family.

Each check is one task; each seed is one random instance drawn from `generator(seed, "instance")`
(Monte Carlo draws, dropout masks and rollouts use `generator(seed, "run")`); each spec's `algo` is the
registered method the claim is about, and the check calls that method's real loss (or its tested
pieces) from `algorithms/` — a loss is never re-implemented here. What a check computes by hand is the
*claim's* formula (the closed form, the paper's derivative, the exact expectation by enumeration), so
the comparison is code against paper. Sweeps (over α, Λ, N, dropout p, |A|/η) log their x value as a
metric of its own with `step` the sweep index. The verdict rules (tolerances, slope intervals) live in
`suite/questions/theory.py`; this file only measures.

Weights are read off a loss through autograd: every EM loss here is −Σ_i w_i log π_θ(y_i) with
detached weights, so ∂L/∂logp_i = −w_i (times the loss's own normalisation).

    task                  claim  algo     source
    multikl-closed-form   T1     gempi    [EM-LLM] §10 eq. 22–23
    dar-to-vmpo           T2     dar      [EM-SFT] §7 ("Mapping DAR to V-MPO"); 000 §10
    ess-chi2              T3     gempi    [EM-LLM] §10 (approximation error 2)
    snis-bias             T4     gempi    [EM-LLM] §10 (approximation errors 1 and 3)
    dpo-gradient          T5     dpo      [EM-LLM] §5
    ipo-variance          T6     ipo      [PMPO] App. E
    em-improvement        T7     mpo      [PMPO] App. C (C.2)
    gempi-unified         T8     gempi    [EM-LLM] §10 ("Recovering existing methods")
    temperature-dual      T9     vmpo     [EM-SFT] §6 (dual, log-sum-exp form)
    dropout-ratio         T10    ppo      [EM-SFT] §9 (problems 1–3)
    dropout-em-gradient   T10    vmpo     [EM-SFT] §9; 000 §10 ("Dropout compatibility")
    gro-unified           T11    gro      [GRO] §5, Table 1; the GRO equations restated in algorithms/gro.py
    dar-practical         T12    dar      [EM-LLM] §7 (last display, eq. 7)
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from algorithms import REGISTRY
from algorithms.awr import AWRConfig
from algorithms.base import Batch, Needs
from algorithms.common import top_k_mask
from algorithms.config import ConfigError, check_positive, check_range, field
from algorithms.cpl import CPLConfig
from algorithms.dar import DARConfig, dar_loss
from algorithms.dpo import DPOConfig
from algorithms.estep import estep
from algorithms.gempi import GEMPIConfig, GEMPIMethod, gempi_loss, multi_temperature_loss
from algorithms.gro import gro_instance, gro_instance_loss
from algorithms.grpo import GRPOConfig, grpo_loss
from algorithms.ipo import IPOConfig, ipo_loss, ipo_regularizer
from algorithms.kto import KTOConfig
from algorithms.mpo import MPOConfig
from algorithms.ppo import PPOConfig, ppo_loss
from algorithms.reinforce_pp import REINFORCEPPConfig, reinforce_pp_loss
from algorithms.remax import ReMaxConfig
from algorithms.rlem import RLEMConfig
from algorithms.rloo import RLOOConfig
from algorithms.sft import SFTConfig
from algorithms.vmpo import VMPOConfig, vmpo_estep, vmpo_loss, vmpo_policy_loss
from tasks.base import Family, RunResult, RunSpec, register_task
from tasks.seeding import generator, stream_seed

D = torch.float64
Rows = list[tuple[int, str, float]]


# ------------------------------------------------------------------------------------------------
# Configs: the family's loop (one knob: the Monte Carlo budget) and one config per check
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TheoryLoopConfig:
    """The theory checks' budget: every Monte Carlo count (replicate batches, pairs, dropout passes) is scaled."""

    mc_scale: float = field(1.0, "multiplier of every Monte Carlo count of the checks (profiles: smoke 0.1, quick 1, paper 4)")

    def __post_init__(self):
        check_positive(self, "mc_scale")

    def count(self, base: int, least: int = 2) -> int:
        """`base` Monte Carlo draws scaled by `mc_scale` (at least `least`)."""
        return max(least, int(round(base * self.mc_scale)))


def _check_sweep(cfg: Any, name: str, lo: float, hi: float, *, at_least: int = 2, lo_open: bool = True) -> None:
    """Refuse a sweep with fewer than `at_least` distinct values or a value outside (lo, hi] ([lo, hi] if not lo_open)."""
    values = getattr(cfg, name)
    inside = (lambda v: lo < v <= hi) if lo_open else (lambda v: lo <= v <= hi)
    if len(set(values)) < at_least or not all(inside(v) for v in values):
        raise ConfigError(f"{type(cfg).__name__}.{name} = {values!r} is invalid: needs at least {at_least} distinct values "
                          f"in {'(' if lo_open else '['}{lo:g}, {hi:g}].")


@dataclass(frozen=True)
class MultiKLConfig:
    outcomes: int = field(16, "size n of the finite output space")
    anchors: int = field(3, "number m of anchor policies π_j (random categoricals), each with a random λ_j ∈ [0.1, 2.1]")

    def __post_init__(self):
        check_positive(self, "anchors")
        check_range(self, "outcomes", 2, 10_000)


@dataclass(frozen=True)
class DARToVMPOConfig:
    contexts: int = field(8, "prompts B per batch")
    samples: int = field(4, "samples K per prompt; DAR: 4")
    ref_spread: float = field(1.0, "std of log π_ref − log π_t per sample (π_ref ≠ π_t in the α sweep)")
    alpha_fracs: tuple[float, ...] = field((1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 1e-5, 1e-6),
                                           "sweep of α/(α+β) at fixed α+β (the DAR config's sum)")

    def __post_init__(self):
        check_positive(self, "contexts", "samples", "ref_spread")
        _check_sweep(self, "alpha_fracs", 0.0, 1.0)


@dataclass(frozen=True)
class ESSConfig:
    outcomes: int = field(20, "size n of the finite output space")
    samples: int = field(256, "batch size N drawn from π_t")
    replicates: int = field(400, "replicate batches per Λ (× mc_scale) for the mean ESS")
    lambdas: tuple[float, ...] = field((0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0), "sweep of the temperature Λ")

    def __post_init__(self):
        check_positive(self, "samples", "replicates")
        check_range(self, "outcomes", 2, 10_000)
        _check_sweep(self, "lambdas", 0.0, math.inf)


@dataclass(frozen=True)
class SNISConfig:
    outcomes: int = field(10, "size n of the finite output space")
    temperature: float = field(1.0, "Λ of the target q* ∝ π_t exp(A/Λ)")
    sizes: tuple[int, ...] = field((16, 32, 64, 128, 256), "sweep of the batch size N")
    replicates: int = field(2000, "replicate batches per N (× mc_scale)")
    groups: int = field(50, "batches of replicates whose means give the standard error")

    def __post_init__(self):
        check_positive(self, "temperature", "replicates")
        check_range(self, "outcomes", 2, 10_000)
        check_range(self, "groups", 2, 10_000)
        _check_sweep(self, "sizes", 1, math.inf)


@dataclass(frozen=True)
class DPOGradientConfig:
    pairs: int = field(32, "preference pairs P (one context each)")
    obs_dim: int = field(6, "context features of the MLP policy")
    hidden: int = field(16, "hidden width of the MLP policy")
    actions: int = field(8, "outputs of the policy")

    def __post_init__(self):
        check_positive(self, "pairs", "obs_dim", "hidden")
        check_range(self, "actions", 2, 10_000)


@dataclass(frozen=True)
class IPOVarianceConfig:
    contexts: int = field(4, "contexts per instance, each a categorical π_θ and π_ref")
    outcomes: int = field(12, "outputs per context")
    pairs: int = field(20000, "Monte Carlo pairs (y_w, y_l) ~ π_ref × π_ref per context (× mc_scale)")

    def __post_init__(self):
        check_positive(self, "contexts", "pairs")
        check_range(self, "outcomes", 2, 10_000)


@dataclass(frozen=True)
class EMImprovementConfig:
    outcomes: int = field(12, "size of the finite set S")
    support: float = field(0.75, "fraction of S in the support of δ_0 (the rest has δ_0 = 0)")
    temperatures: tuple[float, ...] = field((0.1, 0.3, 1.0), "the τ of the iteration δ_{k+1} ∝ δ_k exp(f/τ)")
    max_iters: int = field(2000, "iterations at most (the loop stops at a fixed point)")

    def __post_init__(self):
        check_positive(self, "max_iters")
        check_range(self, "outcomes", 2, 10_000)
        check_range(self, "support", 0.0, 1.0, lo_open=True)
        _check_sweep(self, "temperatures", 0.0, math.inf, at_least=1)


@dataclass(frozen=True)
class UnifiedEMConfig:
    contexts: int = field(5, "contexts B (the last one all padding)")
    samples: int = field(4, "samples K per context (one padded sample in context 0)")

    def __post_init__(self):
        check_range(self, "contexts", 2, 10_000)
        check_range(self, "samples", 2, 10_000)


@dataclass(frozen=True)
class TemperatureDualConfig:
    contexts: int = field(8, "contexts B")
    samples: int = field(8, "samples K per context (the V-MPO batch is B·K samples)")
    eta: float = field(0.7, "temperature η at which the derivative is taken")
    scales: tuple[float, ...] = field((1.0, 10.0, 100.0, 1e3, 1e4), "sweep of max |A|/η")

    def __post_init__(self):
        check_positive(self, "contexts", "samples", "eta")
        _check_sweep(self, "scales", 0.0, math.inf, at_least=1)


@dataclass(frozen=True)
class DropoutRatioConfig:
    obs_dim: int = field(8, "input features of the MLP policy")
    hidden: int = field(64, "width of its two hidden layers (dropout after each)")
    actions: int = field(6, "discrete actions")
    states: int = field(2048, "states in the rollout (× mc_scale): CleanRL's 2048 steps per rollout")
    minibatch: int = field(64, "minibatch size (CleanRL: 2048 / 32)")
    ps: tuple[float, ...] = field((0.0, 0.05, 0.1, 0.2, 0.3, 0.5), "sweep of the dropout probability p")

    def __post_init__(self):
        check_positive(self, "obs_dim", "hidden", "actions", "states", "minibatch")
        _check_sweep(self, "ps", 0.0, 0.9, lo_open=False)


@dataclass(frozen=True)
class DropoutGradientConfig:
    obs_dim: int = field(4, "input features of the MLP policy")
    hidden: int = field(10, "width of its hidden layer (dropout after it); 2^hidden masks are enumerated")
    actions: int = field(5, "discrete actions")
    batch: int = field(32, "samples in the M-step batch")
    passes: int = field(500, "single-pass stochastic gradients averaged (× mc_scale)")
    groups: int = field(100, "batches of passes whose mean gradients give the standard errors (each batch one forward pass)")
    ps: tuple[float, ...] = field((0.1, 0.3, 0.5), "sweep of the dropout probability p")

    def __post_init__(self):
        check_positive(self, "obs_dim", "actions", "batch", "passes", "groups")
        check_range(self, "hidden", 1, 14)
        _check_sweep(self, "ps", 0.0, 0.9, at_least=1)


@dataclass(frozen=True)
class GROUnifiedConfig:
    contexts: int = field(3, "contexts B")
    samples: int = field(4, "samples K per context")
    tokens: int = field(6, "tokens T of the token-level GRPO / REINFORCE++ checks (ragged lengths)")

    def __post_init__(self):
        check_positive(self, "contexts", "tokens")
        check_range(self, "samples", 2, 10_000)


@dataclass(frozen=True)
class DARPracticalConfig:
    outcomes: int = field(8, "size n of the finite output space")
    samples: int = field(64, "samples N per batch from π_t")
    replicates: int = field(4000, "replicate batches (× mc_scale)")

    def __post_init__(self):
        check_positive(self, "samples", "replicates")
        check_range(self, "outcomes", 2, 10_000)


# ------------------------------------------------------------------------------------------------
# Small helpers shared by the checks
# ------------------------------------------------------------------------------------------------


def _randn(g: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=g, dtype=D)


def _categorical(g: torch.Generator, n: int, spread: float = 1.0) -> Tensor:
    """log-probs of a random categorical over n outcomes (logits ~ N(0, spread²))."""
    return torch.log_softmax(spread * _randn(g, n), -1)


def _sample(g: torch.Generator, logp: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Indices drawn i.i.d. from the categorical exp(logp), in `shape`."""
    n = math.prod(shape)
    return torch.multinomial(logp.exp(), n, replacement=True, generator=g).reshape(shape)


def _grad_logp(loss: Tensor, logp: Tensor) -> Tensor:
    (grad,) = torch.autograd.grad(loss, logp)
    return grad


def rel_max_err(a: Tensor, b: Tensor) -> float:
    """max |a − b| / max |b| (0 when both vanish)."""
    scale = float(b.abs().max())
    err = float((a - b).abs().max())
    return err / scale if scale > 0 else (0.0 if err == 0 else math.inf)


@contextlib.contextmanager
def seeded_global_rng(seed: int, stream: str):
    """The global torch RNG (which `nn.Dropout` draws from) forked and seeded from the named stream; restored after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(seed, stream))
        yield


# ------------------------------------------------------------------------------------------------
# T1 — Multi-KL closed form ([EM-LLM] §10 eq. 22–23)
# ------------------------------------------------------------------------------------------------


def multikl_instance(g: torch.Generator, n: int, m: int) -> dict[str, Tensor]:
    """Random anchors log π_j [m, n], coefficients λ_j [m] in [0.1, 2.1] and advantages A [n]."""
    log_pis = torch.stack([_categorical(g, n, 1.5) for _ in range(m)])
    lambdas = 0.1 + 2.0 * torch.rand(m, generator=g, dtype=D)
    return {"log_pis": log_pis, "lambdas": lambdas, "A": _randn(g, n)}


def multikl_objective(q: Tensor, inst: dict[str, Tensor]) -> Tensor:
    """E_q[A] − Σ_j λ_j KL(q‖π_j) (eq. 22), q a probability vector [n]."""
    logq = torch.log(q.clamp_min(1e-300))
    kls = (q * (logq[None] - inst["log_pis"])).sum(-1)
    return (q * inst["A"]).sum() - (inst["lambdas"] * kls).sum()


def gempi_closed_form_target(inst: dict[str, Tensor], cfg: GEMPIConfig) -> Tensor:
    """q* from the suite's GEMPI E-step on the enumerated space: the weights −∂L/∂log π_θ.

    Every outcome is one sample of one context, drawn "once each" (the sampling measure is uniform,
    log π_sample = −log n, which self-normalisation cancels), each anchor is given by its log-probs, and
    the tuple's options (fixed temperature, no filter, weights self-normalised per context) come from
    `cfg`. The loss is −Σ_y w_y log π_θ(y) with Σ w = 1, so w = q* if eq. 23 holds in the code.
    """
    n = inst["A"].numel()
    logp = torch.zeros(1, n, dtype=D, requires_grad=True)
    loss, _ = gempi_loss(logp, inst["A"][None], torch.ones(1, n, dtype=D),
                         anchor_logp=[lp[None] for lp in inst["log_pis"]],
                         logp_sample=torch.full((1, n), -math.log(n), dtype=D),
                         lambdas=inst["lambdas"], **cfg.loss_options())
    return -_grad_logp(loss, logp)[0]


def maximise_numerically(inst: dict[str, Tensor]) -> Tensor:
    """argmax of eq. 22 over the simplex by scipy's BFGS on softmax logits, gradients by autograd (knows nothing of eq. 23)."""
    import scipy.optimize

    def negative_objective(z: np.ndarray) -> tuple[float, np.ndarray]:
        zt = torch.tensor(z, dtype=D, requires_grad=True)
        value = -multikl_objective(torch.softmax(zt, -1), inst)
        (grad,) = torch.autograd.grad(value, zt)
        return float(value.detach()), grad.numpy()

    result = scipy.optimize.minimize(negative_objective, np.zeros(inst["A"].numel()), jac=True, method="BFGS",
                                     options=dict(gtol=1e-14, maxiter=2000))
    return torch.softmax(torch.tensor(result.x, dtype=D), -1)


def check_multikl(cfg: MultiKLConfig, algo: GEMPIConfig, loop: TheoryLoopConfig, seed: int) -> Rows:
    """T1: the GEMPI E-step's target equals the numerical maximiser of E_q[A] − Σ λ_j KL(q‖π_j)."""
    _require(algo.temperature == "fixed" and algo.normalize == "context" and algo.filter == "identity"
             and algo.advantage_norm == "none" and algo.baseline == "none" and algo.m_step == "none",
             "multikl-closed-form needs a GEMPI tuple with a fixed temperature, no filter, per-context weights, raw advantages")
    inst = multikl_instance(generator(seed, "instance"), cfg.outcomes, cfg.anchors)
    q_code = gempi_closed_form_target(inst, algo)
    q_opt = maximise_numerically(inst)
    with torch.no_grad():
        gap = float(multikl_objective(q_opt, inst) - multikl_objective(q_code, inst))
    return [(0, "q_rel_err", rel_max_err(q_code, q_opt)), (0, "objective_gap", gap),
            (0, "Lambda", float(inst["lambdas"].sum())), (0, "q_max", float(q_opt.max()))]


# ------------------------------------------------------------------------------------------------
# T2 — DAR → V-MPO ([EM-SFT] §7)
# ------------------------------------------------------------------------------------------------


def dar_weights(A: Tensor, logp_old: Tensor, logp_ref: Tensor, cfg: DARConfig) -> Tensor:
    """DAR's practical weights from `dar_loss` (−∂L/∂logp), normalised over the batch."""
    logp = torch.zeros_like(A, requires_grad=True)
    loss, _ = dar_loss(logp, A, torch.ones_like(A), logp_old, logp_ref, alpha=cfg.alpha, beta=cfg.beta,
                       weight_clip=cfg.weight_clip, baseline=cfg.baseline, advantage_norm=cfg.advantage_norm)
    w = -_grad_logp(loss, logp)
    return w / w.sum()


def vmpo_weights(A: Tensor, eta: float, cfg: VMPOConfig) -> Tensor:
    """V-MPO's ψ from `vmpo_loss` (−∂L/∂logp) at temperature η, normalised over the batch ([EM-SFT] §6)."""
    logp = torch.zeros_like(A, requires_grad=True)
    kl = torch.zeros(A.shape[0], dtype=D)
    loss, _ = vmpo_loss(A, torch.ones_like(A), logp, kl, torch.tensor(eta, dtype=D), torch.tensor(cfg.alpha, dtype=D),
                        epsilon_eta=cfg.epsilon_eta, epsilon_alpha=cfg.epsilon_alpha, topk_frac=cfg.topk_frac)
    return -_grad_logp(loss, logp)


def weight_gap(w: Tensor, psi: Tensor) -> float:
    """max_i |w_i − ψ_i| / max_i ψ_i."""
    return float((w - psi).abs().max() / psi.max())


def check_dar_to_vmpo(cfg: DARToVMPOConfig, algo: DARConfig, loop: TheoryLoopConfig, seed: int) -> Rows:
    """T2: DAR weights = V-MPO weights (η = α+β) when π_ref = π_t; the gap is O(α) as α → 0 at fixed α+β.

    The weight clip is lifted (the identity concerns the closed-form target; a clip at 20 changes every
    weight above 20) and V-MPO keeps every sample (top-k fraction 1: DAR has no filter). A/t ~ N(0, 1)
    so that neither weight vector is degenerate.
    """
    _require(algo.baseline == "none" and algo.advantage_norm == "none",
             "dar-to-vmpo feeds the same advantages to DAR and V-MPO: it needs baseline='none', advantage_norm='none'")
    g = generator(seed, "instance")
    t = algo.alpha + algo.beta
    shape = (cfg.contexts, cfg.samples)
    logp_old = _randn(g, *shape) - 2.0
    logp_ref = logp_old + cfg.ref_spread * _randn(g, *shape)
    A = t * _randn(g, *shape)
    psi = vmpo_weights(A, t, VMPOConfig(topk_frac=1.0))
    unclipped = dataclasses.replace(algo, weight_clip=math.inf)
    rows: Rows = [(0, "gap_ref_equals_t", weight_gap(dar_weights(A, logp_old, logp_old, unclipped), psi)), (0, "t", t)]
    for i, frac in enumerate(cfg.alpha_fracs):
        alpha = frac * t
        w = dar_weights(A, logp_old, logp_ref, dataclasses.replace(unclipped, alpha=alpha, beta=t - alpha))
        rows += [(i, "alpha", alpha), (i, "alpha_frac", frac), (i, "max_weight_gap", weight_gap(w, psi))]
    return rows


# ------------------------------------------------------------------------------------------------
# T3 — ESS ≈ N/(1 + χ²(q*‖π_t)) ([EM-LLM] §10)
# ------------------------------------------------------------------------------------------------


def chi2_target(log_pi: Tensor, A: Tensor, lam: float) -> float:
    """χ²(q*‖π_t) = Σ q*²/π_t − 1 with q* ∝ π_t exp(A/Λ), by enumeration."""
    logq = torch.log_softmax(log_pi + A / lam, -1)
    return float(torch.exp(2 * logq - log_pi).sum() - 1.0)


def check_ess(cfg: ESSConfig, algo: GEMPIConfig, loop: TheoryLoopConfig, seed: int) -> Rows:
    """T3: the mean Kish ESS of the GEMPI E-step's weights on N samples from π_t, against N/(1+χ²), as Λ varies."""
    _require(algo.anchors == ("pi_t",) and algo.temperature == "fixed" and algo.normalize == "context"
             and algo.advantage_norm == "none" and algo.filter == "identity",
             "ess-chi2 needs the single-anchor (π_t) GEMPI tuple with a fixed temperature and per-context weights")
    gi, gr = generator(seed, "instance"), generator(seed, "run")
    log_pi, A = _categorical(gi, cfg.outcomes), _randn(gi, cfg.outcomes)
    R, N = loop.count(cfg.replicates), cfg.samples
    y = _sample(gr, log_pi, (R, N))
    rows: Rows = [(0, "N", float(N))]
    for i, lam in enumerate(cfg.lambdas):
        _, metrics = gempi_loss(torch.zeros(R, N, dtype=D), A[y], torch.ones(R, N, dtype=D), anchor_logp=[None],
                                logp_sample=None, lambdas=[lam], **algo.loss_options())
        chi2 = chi2_target(log_pi, A, lam)
        rows += [(i, "Lambda", lam), (i, "chi2", chi2), (i, "ess", float(metrics["weights/ess"])),
                 (i, "ess_predicted", N / (1.0 + chi2))]
    return rows


# ------------------------------------------------------------------------------------------------
# T4 — SNIS bias O(1/N) ([EM-LLM] §10)
# ------------------------------------------------------------------------------------------------


def check_snis_bias(cfg: SNISConfig, algo: GEMPIConfig, loop: TheoryLoopConfig, seed: int) -> Rows:
    """T4: bias of the self-normalised M-step gradient and of the dual's log Ẑ, against N.

    Policy: log-linear π_θ(y) ∝ exp(θ·A(y)), so ∂L̂/∂θ = −(Σ_i ŵ_i A(y_i) − E_πθ[A]): its bias is the
    SNIS bias of μ = E_q*[A], with ŵ the GEMPI E-step's weights (−∂L/∂log π_θ(y_i)). The dual's partition
    estimate Λ·log Ẑ comes from `gempi.multi_temperature_loss` at ε = 0. Exact values by enumeration.

    Each bias is estimated as the mean of (estimate − its first-order linearisation): the linearisations
    (1/N) Σ_i w_i (A_i − μ) and Λ(Ẑ/Z − 1), with w = q*/π_t exact, have mean exactly 0, so the difference has
    the estimator's bias but a variance O(1/N²) instead of O(1/N): the bias is resolved at every N with a
    fixed number of replicates. Standard errors from the spread of `groups` batch means. The delta-method
    first-order biases (−E_π[w²(A − μ)]/N and −Λχ²/(2N)) are logged beside.
    """
    gi, gr = generator(seed, "instance"), generator(seed, "run")
    log_pi, A = _categorical(gi, cfg.outcomes), _randn(gi, cfg.outcomes)
    lam = cfg.temperature
    logq = torch.log_softmax(log_pi + A / lam, -1)
    mu = float((logq.exp() * A).sum())
    w = torch.exp(logq - log_pi)
    chi2 = float((log_pi.exp() * w * w).sum() - 1.0)
    snis_first_order = -float((log_pi.exp() * w * w * (A - mu)).sum())
    log_z = float(torch.logsumexp(log_pi + A / lam, -1))
    G = cfg.groups
    R = max(G, loop.count(cfg.replicates) // G * G)
    rows: Rows = [(0, "chi2", chi2)]
    for i, N in enumerate(cfg.sizes):
        y = _sample(gr, log_pi, (R, N))
        a = A[y]
        logp = torch.zeros(R, N, dtype=D, requires_grad=True)
        loss, _ = gempi_loss(logp, a, torch.ones(R, N, dtype=D), anchor_logp=[None], logp_sample=None, lambdas=[lam],
                             **algo.loss_options())
        w_hat = -_grad_logp(loss, logp) * R  # per replicate, Σ_i ŵ_i = 1 (the loss averages over contexts)
        snis_err = (w_hat * a).sum(-1) - mu - (w[y] * (a - mu)).mean(-1)
        logz_hat = torch.stack([  # Λ · mean over the group's replicates of log Ẑ
            multi_temperature_loss(chunk, torch.zeros(1, *chunk.shape, dtype=D), torch.ones_like(chunk),
                                   torch.tensor([lam], dtype=D), [0.0], over="context")
            for chunk in a.reshape(G, -1, N)])
        z_ratio = torch.exp(a / lam - log_z).mean(-1)  # Ẑ/Z per replicate
        logz_err = logz_hat - lam * log_z - lam * (z_ratio - 1.0).reshape(G, -1).mean(-1)
        for name, err, first in (("snis", snis_err.reshape(G, -1).mean(-1), snis_first_order), ("logz", logz_err, -lam * chi2 / 2)):
            rows += [(i, f"{name}_bias", float(err.mean())), (i, f"{name}_se", float(err.std() / math.sqrt(G))),
                     (i, f"{name}_first_order", first / N)]
        rows.append((i, "N", float(N)))
    return rows


# ------------------------------------------------------------------------------------------------
# T5 — DPO gradient ([EM-LLM] §5)
# ------------------------------------------------------------------------------------------------


def mlp_params(g: torch.Generator, sizes: list[int]) -> dict[str, Tensor]:
    """Weights of an MLP with tanh hidden layers: {"w0", "b0", "w1", ...}, leaves requiring grad."""
    params = {}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        params[f"w{i}"] = (_randn(g, b, a) / math.sqrt(a)).requires_grad_()
        params[f"b{i}"] = (0.1 * _randn(g, b)).requires_grad_()
    return params


def mlp_logp(params: dict[str, Tensor], x: Tensor) -> Tensor:
    """log-softmax of the MLP's output logits."""
    n = len(params) // 2
    h = x
    for i in range(n):
        h = h @ params[f"w{i}"].T + params[f"b{i}"]
        if i < n - 1:
            h = torch.tanh(h)
    return torch.log_softmax(h, -1)


def dpo_closed_form_gradient(params: dict[str, Tensor], x: Tensor, y_w: Tensor, y_l: Tensor, logp_ref_w: Tensor,
                             logp_ref_l: Tensor, beta: float) -> dict[str, Tensor]:
    """000 §5: ∇L = −β mean_p σ(r̂_l − r̂_w)(∇log π(y_w) − ∇log π(y_l)), r̂ = β log π_θ/π_ref, from per-sample
    score functions (Jacobians of log π(y|x) with respect to every parameter)."""
    names = list(params)

    def logp_pair(*ps):
        lp = mlp_logp(dict(zip(names, ps)), x)
        rows = torch.arange(x.shape[0])
        return lp[rows, y_w], lp[rows, y_l]

    with torch.no_grad():
        lw, ll = logp_pair(*params.values())
        coef = beta * torch.sigmoid(beta * (ll - logp_ref_l) - beta * (lw - logp_ref_w)) / x.shape[0]
    jac_w, jac_l = torch.func.jacrev(logp_pair, argnums=tuple(range(len(names))))(*[p.detach() for p in params.values()])
    return {n: -torch.einsum("p,p...->...", coef, jw - jl) for n, jw, jl in zip(names, jac_w, jac_l)}


def check_dpo_gradient(cfg: DPOGradientConfig, algo: DPOConfig, loop: TheoryLoopConfig, seed: int) -> Rows:
    """T5: autograd through the DPO method's loss against the paper's closed-form gradient (MLP policy)."""
    g = generator(seed, "instance")
    params = mlp_params(g, [cfg.obs_dim, cfg.hidden, cfg.actions])
    x = _randn(g, cfg.pairs, cfg.obs_dim)
    logp_ref_all = torch.log_softmax(_randn(g, cfg.pairs, cfg.actions), -1)
    y = torch.stack([torch.randperm(cfg.actions, generator=g)[:2] for _ in range(cfg.pairs)])  # [P, 2], distinct
    score = torch.rand(cfg.pairs, 2, generator=g, dtype=D)
    rows_idx = torch.arange(cfg.pairs)[:, None]
    logp = mlp_logp(params, x)[rows_idx, y]
    batch = Batch(logp=logp, score=score, mask=torch.ones_like(score), logp_ref=logp_ref_all[rows_idx, y])
    loss, _ = REGISTRY["dpo"](algo)(batch)
    auto = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
    win = score.argmax(-1, keepdim=True)
    y_w, y_l = y.gather(1, win)[:, 0], y.gather(1, 1 - win)[:, 0]
    ref = logp_ref_all[torch.arange(cfg.pairs)]
    closed = dpo_closed_form_gradient(params, x, y_w, y_l, ref.gather(1, y_w[:, None])[:, 0], ref.gather(1, y_l[:, None])[:, 0],
                                      algo.beta)
    err = max(rel_max_err(auto[n], closed[n]) for n in params)
    return [(0, "grad_rel_err", err), (0, "grad_norm", float(torch.cat([v.flatten() for v in closed.values()]).norm()))]


# ------------------------------------------------------------------------------------------------
# T6 — IPO regulariser = unbiased 2·Var[log π_θ/π_ref] (004 App. E)
# ------------------------------------------------------------------------------------------------


def check_ipo_variance(cfg: IPOVarianceConfig, algo: IPOConfig, loop: TheoryLoopConfig, seed: int) -> Rows:
    """T6: E_{y_w, y_l ~ π_ref}[h²] = 2 Var_{π_ref}[log π_θ/π_ref], exactly (all n² pairs) and by Monte Carlo."""
    gi, gr = generator(seed, "instance"), generator(seed, "run")
    M = loop.count(cfg.pairs, least=100)
    i, j = (t.flatten() for t in torch.meshgrid(torch.arange(cfg.outcomes), torch.arange(cfg.outcomes), indexing="ij"))
    rows: Rows = []
    for c in range(cfg.contexts):
        logp_ref, logp = _categorical(gi, cfg.outcomes), _categorical(gi, cfg.outcomes)
        p, d = logp_ref.exp(), logp - logp_ref
        two_var = float(2 * ((p * d * d).sum() - (p * d).sum() ** 2))
        exact = float((p[i] * p[j] * ipo_regularizer(logp[i], logp[j], logp_ref[i], logp_ref[j])).sum())
        yw, yl = _sample(gr, logp_ref, (M,)), _sample(gr, logp_ref, (M,))
        _, metrics = ipo_loss(logp[yw], logp[yl], logp_ref[yw], logp_ref[yl], beta=algo.beta, log_ratio="sum")
        per_pair = ipo_regularizer(logp[yw], logp[yl], logp_ref[yw], logp_ref[yl])
        z = (float(metrics["policy/regularizer"]) - two_var) / float(per_pair.std() / math.sqrt(M))
        rows += [(c, "two_var", two_var), (c, "exact_rel_err", abs(exact - two_var) / two_var), (c, "mc_z", z),
                 (c, "mc_mean", float(metrics["policy/regularizer"]))]
    return rows


# ------------------------------------------------------------------------------------------------
# T7 — EM improvement (004 App. C)
# ------------------------------------------------------------------------------------------------

ROUNDING = 1e-12
"""T7: E_{δ_{k+1}}[f] − E_{δ_k}[f] below −ROUNDING·max|f| counts as a decrease (float64 sums round at ~1e-16)."""
FIXED_POINT_TV = 1e-15
"""T7: the iteration stops (a fixed point, to float64 resolution) once a step moves δ by less than this in total variation."""
MOVED_TV = 1e-6
"""T7: a step whose total-variation move exceeds this must strictly increase E[f] (smaller moves are below float resolution)."""


def check_em_improvement(cfg: EMImprovementConfig, algo: MPOConfig, loop: TheoryLoopConfig, seed: int) -> Rows:
    """T7: iterate the fixed-temperature E-step δ_{k+1} ∝ δ_k exp(f/τ) (`estep.estep` with log_prior log δ_k) and
    record every change of E_δ[f]; the limit should put all mass on the best element of δ_0's support."""
    g = generator(seed, "instance")
    n = cfg.outcomes
    f = _randn(g, n)
    support = torch.zeros(n, dtype=D)
    support[torch.randperm(n, generator=g)[:max(2, int(round(cfg.support * n)))]] = 1.0
    log_d0 = torch.where(support > 0, torch.log_softmax(_randn(g, n), -1), torch.zeros(n, dtype=D))
    best = float(f[support > 0].max())
    rows: Rows = []
    for i, tau in enumerate(cfg.temperatures):
        eta = torch.tensor(tau, dtype=D)
        log_d = normalise_log(log_d0, support)
        e_prev = float((log_d.exp() * support * f).sum())
        decreases, stalls, steps, converged = 0, 0, 0, False
        for steps in range(1, cfg.max_iters + 1):
            log_w, _, _ = estep(f[None], support[None], eta, over="context",
                                log_prior=torch.where(support > 0, log_d, torch.zeros_like(log_d))[None])
            new = torch.where(support > 0, log_w[0], torch.zeros_like(log_w[0]))
            tv = 0.5 * float((new.exp() * support - log_d.exp() * support).abs().sum())
            e_new = float((new.exp() * support * f).sum())
            inc = e_new - e_prev
            decreases += inc < -ROUNDING * float(f.abs().max())
            stalls += tv > MOVED_TV and not inc > 0
            log_d, e_prev = new, e_new
            if tv < FIXED_POINT_TV:
                converged = True
                break
        rows += [(i, "temperature", tau), (i, "decreases", float(decreases)), (i, "stalls", float(stalls)),
                 (i, "iterations", float(steps)), (i, "converged", float(converged)), (i, "final_gap", best - e_prev),
                 (i, "initial_gap", best - float((normalise_log(log_d0, support).exp() * support * f).sum()))]
    return rows


def normalise_log(log_d: Tensor, support: Tensor) -> Tensor:
    """log δ renormalised over the support (0 outside, ignored there)."""
    masked = torch.where(support > 0, log_d, torch.full_like(log_d, -math.inf))
    return torch.where(support > 0, masked - torch.logsumexp(masked, -1), torch.zeros_like(log_d))


# ------------------------------------------------------------------------------------------------
# T8 — Unified EM: generic GEMPI = dedicated loss ([EM-LLM] §10 "Recovering existing methods")
# ------------------------------------------------------------------------------------------------

GEMPI_CASES: tuple[tuple[str, str, Any], ...] = (
    ("sft", "sft", SFTConfig()),
    ("sft[context_mean]", "sft", SFTConfig(reduction="context_mean")),
    ("awr", "awr", AWRConfig()),
    ("awr[β=0.5, raw A]", "awr", AWRConfig(beta=0.5, advantage_norm="none")),
    ("vmpo", "vmpo", VMPOConfig()),
    ("vmpo[ρ=1, ε_η=0.1, η=0.3]", "vmpo", VMPOConfig(topk_frac=1.0, epsilon_eta=0.1, eta=0.3)),
    ("dar", "dar", DARConfig()),
    ("dar[α=0, raw A]", "dar", DARConfig(alpha=0.0, beta=1.0, baseline="none", advantage_norm="none")),
    ("rlem", "rlem", RLEMConfig()),
    ("rlem[batch, penalty]", "rlem", RLEMConfig(normalize="batch", m_step="penalty", beta=0.5)),
    ("rlem[constraint]", "rlem", RLEMConfig(m_step="constraint", kl_coef=2.0)),
)
"""T8: (label, dedicated method, its config): each paper row of `[EM-LLM] §10`'s table, defaults and a variant."""


def unified_batch(g: torch.Generator, B: int, K: int) -> Batch:
    """A random [B, K] batch with padding (sample K−1 of context 0, all of context B−1) and every field."""
    mask = torch.ones(B, K, dtype=D)
    mask[0, K - 1] = 0
    mask[B - 1] = 0
    logp_old = _randn(g, B, K) - 2
    offset = 3.0 * torch.arange(B, dtype=D)[:, None]  # batch-level and per-context top-k differ
    return Batch(logp=(_randn(g, B, K) - 2).requires_grad_(), score=2.0 * _randn(g, B, K) + offset, mask=mask,
                 logp_old=logp_old, logp_ref=logp_old + 0.3 * _randn(g, B, K), label=torch.sign(_randn(g, B, K)),
                 kl_old=_randn(g, B).abs().requires_grad_(), kl_ref=_randn(g, B).abs().requires_grad_())


def grad_rel_err(ga: list[Tensor | None], gb: list[Tensor | None]) -> float:
    """max over tensors of max|a − b| / max(|a|, |b|); a missing gradient counts as zeros."""
    worst = 0.0
    for a, b in zip(ga, gb):
        if a is None and b is None:
            continue
        a = torch.zeros_like(b) if a is None else a
        b = torch.zeros_like(a) if b is None else b
        scale = max(float(a.abs().max()), float(b.abs().max()))
        if scale > 0:
            worst = max(worst, float((a - b).abs().max()) / scale)
    return worst


def check_gempi_unified(cfg: UnifiedEMConfig, algo: GEMPIConfig, loop: TheoryLoopConfig, seed: int) -> Rows:
    """T8: for each case, `GEMPIMethod(cfg.to_gempi())` against the dedicated method: loss value and the
    gradients with respect to log π_θ, both closed-form KLs and every dual parameter."""
    g = generator(seed, "instance")
    rows: Rows = []
    for i, (label, name, native_cfg) in enumerate(GEMPI_CASES):
        batch = unified_batch(g, cfg.contexts, cfg.samples)
        dedicated, generic = REGISTRY[name](native_cfg).double(), GEMPIMethod(native_cfg.to_gempi()).double()
        la, lb = dedicated.loss(batch)[0], generic.loss(batch)[0]
        wrt = lambda m: [batch.logp, batch.kl_old, batch.kl_ref, *m.parameters()]  # noqa: E731
        ga = torch.autograd.grad(la, wrt(dedicated), allow_unused=True)
        gb = torch.autograd.grad(lb, wrt(generic), allow_unused=True)
        la, lb = la.detach(), lb.detach()
        value_err = abs(float(la - lb)) / max(abs(float(la)), abs(float(lb)), 1e-300)
        rows += [(i, f"value_rel_err/{label}", value_err), (i, f"grad_rel_err/{label}", grad_rel_err(list(ga), list(gb)))]
    return rows


# ------------------------------------------------------------------------------------------------
# T9 — the temperature dual's derivative and its log-sum-exp form ([EM-SFT] §6)
# ------------------------------------------------------------------------------------------------


def dual_derivative_formula(A: Tensor, keep: Tensor, eta: float, epsilon: float) -> tuple[float, float]:
    """001 §6: dL_η/dη = ε + g(η) − E_{p_η}[A]/η, g = log mean_S exp(A/η), p_η = softmax(A/η) on S.
    Returns (the derivative, the scale |ε| + |g| + |E_p[A]/η| of its terms)."""
    a = A[keep > 0]
    u = a / eta
    g = float(torch.logsumexp(u, 0) - math.log(a.numel()))
    e_p = float((torch.softmax(u, 0) * a).sum()) / eta
    return epsilon + g - e_p, abs(epsilon) + abs(g) + abs(e_p)


def check_temperature_dual(cfg: TemperatureDualConfig, algo: VMPOConfig, loop: TheoryLoopConfig, seed: int) -> Rows:
    """T9: autograd of V-MPO's L_η (`vmpo_estep`, top-k set) against the paper's derivative, and finiteness of
    L_η, its gradient and the weights for max |A|/η up to 1e4, in float64 and float32."""
    g = generator(seed, "instance")
    z = _randn(g, cfg.contexts, cfg.samples)
    z = z / z.abs().max()
    mask = torch.ones_like(z)
    rows: Rows = []
    for i, scale in enumerate(cfg.scales):
        A = scale * cfg.eta * z  # max |A|/η = scale
        finite = {}
        for dtype in (D, torch.float32):
            eta = torch.tensor(cfg.eta, dtype=dtype, requires_grad=True)
            log_w, eta_loss, _ = vmpo_estep(A.to(dtype), mask.to(dtype), eta, epsilon_eta=algo.epsilon_eta,
                                            topk_frac=algo.topk_frac)
            (d_auto,) = torch.autograd.grad(eta_loss, eta)
            finite[dtype] = bool(torch.isfinite(eta_loss) and torch.isfinite(d_auto) and torch.isfinite(log_w.exp()).all()
                                 and abs(float(log_w.exp().sum()) - 1.0) < 1e-3)
            if dtype == D:
                keep = top_k_mask(A, mask, frac=algo.topk_frac, over="batch")
                d_formula, term_scale = dual_derivative_formula(A, keep, cfg.eta, algo.epsilon_eta)
                err = abs(float(d_auto) - d_formula) / term_scale
        naive = torch.exp(A / cfg.eta).sum()  # the form without the max shift (the paper's reason for log-sum-exp)
        rows += [(i, "scale", scale), (i, "deriv_rel_err", err), (i, "finite_f64", float(finite[D])),
                 (i, "finite_f32", float(finite[torch.float32])), (i, "naive_finite_f64", float(torch.isfinite(naive)))]
    return rows


# ------------------------------------------------------------------------------------------------
# T10 — dropout: PPO's ratio at θ = θ_old, and the EM M-step gradient ([EM-SFT] §9, 000 §10)
# ------------------------------------------------------------------------------------------------


class DropoutMLP(nn.Module):
    """A small policy network with dropout after each ReLU hidden layer (real `nn.Dropout` modules).

    `forward(x, masks=...)` replaces the dropout draws by given {0,1} masks (one [M, width] tensor per
    hidden layer, shared by the batch; scaled by 1/(1−p) as `nn.Dropout` does) for exact enumeration.
    """

    def __init__(self, sizes: list[int], p: float):
        super().__init__()
        self.linears = nn.ModuleList(nn.Linear(a, b, dtype=D) for a, b in zip(sizes[:-1], sizes[1:]))
        self.drops = nn.ModuleList(nn.Dropout(p) for _ in sizes[1:-1])

    def set_p(self, p: float) -> None:
        for d in self.drops:
            d.p = p

    def forward(self, x: Tensor, masks: list[Tensor] | None = None) -> Tensor:
        h = x
        for i, lin in enumerate(self.linears[:-1]):
            h = torch.relu(lin(h))
            if masks is None:
                h = self.drops[i](h)
            else:
                h = h[None] * masks[i][:, None, :] / (1.0 - self.drops[i].p)  # [M, B, width]
        return torch.log_softmax(self.linears[-1](h), -1)


def _init_from(g: torch.Generator, model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p.shape[-1] if p.dim() > 1 else 1
            p.copy_(_randn(g, *p.shape) / math.sqrt(fan_in) if p.dim() > 1 else 0.1 * _randn(g, *p.shape))
    return model


def check_dropout_ratio(cfg: DropoutRatioConfig, algo: PPOConfig, loop: TheoryLoopConfig, seed: int) -> Rows:
    """T10 (PPO): roll out in eval mode (no dropout: π_old), then evaluate the same θ = θ_old in train mode
    with dropout p, minibatch by minibatch, through `ppo_loss`: ratio spread (`ratio/std`), clip fraction
    at the first minibatch of the first epoch (`ratio/clipfrac`, averaged over minibatches = its
    expectation), the k3 KL estimate (`kl/old`) and the k1 estimate mean(ℓ_old − ℓ_θ) of 001 §9, whose true
    value at θ = θ_old is 0."""
    gi = generator(seed, "instance")
    model = _init_from(gi, DropoutMLP([cfg.obs_dim, cfg.hidden, cfg.hidden, cfg.actions], 0.0))
    S = loop.count(cfg.states, least=cfg.minibatch) // cfg.minibatch * cfg.minibatch
    x = _randn(gi, S, cfg.obs_dim)
    adv = _randn(gi, S)
    with seeded_global_rng(seed, "run"):
        model.eval()
        with torch.no_grad():
            logp_all = model(x)
            a = torch.multinomial(logp_all.exp(), 1, generator=generator(seed, "run/actions"))[:, 0]
            logp_old = logp_all.gather(1, a[:, None])[:, 0]
        rows: Rows = []
        for i, p in enumerate(cfg.ps):
            model.set_p(p)
            model.train()
            stats = {"ratio/std": [], "ratio/clipfrac": [], "kl/old": []}
            k1 = []
            with torch.no_grad():
                for s in range(0, S, cfg.minibatch):
                    sl = slice(s, s + cfg.minibatch)
                    logp = model(x[sl]).gather(1, a[sl, None])  # [mb, 1]: one action, T = 1
                    _, m = ppo_loss(logp, logp_old[sl, None], adv[sl], torch.ones_like(logp), clip_eps=algo.clip_eps,
                                    ratio_level=algo.ratio_level, reduction=algo.reduction,
                                    advantage_norm=algo.advantage_norm)
                    for key in stats:
                        stats[key].append(float(m[key]))
                    k1.append(logp_old[sl] - logp[:, 0])
            k1 = torch.cat(k1)
            rows += [(i, "p", p), (i, "ratio_std", sum(stats["ratio/std"]) / len(stats["ratio/std"])),
                     (i, "clipfrac", sum(stats["ratio/clipfrac"]) / len(stats["ratio/clipfrac"])),
                     (i, "clipfrac_first", stats["ratio/clipfrac"][0]),
                     (i, "kl_k3", sum(stats["kl/old"]) / len(stats["kl/old"])),
                     (i, "kl_k1", float(k1.mean())), (i, "kl_k1_se", float(k1.std() / math.sqrt(S)))]
    return rows


def all_masks(width: int, p: float) -> tuple[Tensor, Tensor]:
    """Every {0,1} mask of a layer of `width` units [2^width, width] and its probability under dropout p."""
    masks = torch.tensor(list(itertools.product((0.0, 1.0), repeat=width)), dtype=D)
    kept = masks.sum(-1)
    return masks, (1 - p) ** kept * p ** (width - kept)


def check_dropout_em_gradient(cfg: DropoutGradientConfig, algo: VMPOConfig, loop: TheoryLoopConfig, seed: int) -> Rows:
    """T10 (EM): the V-MPO M-step L_π = −Σ ψ_i log π_θ(y_i) with E-step weights ψ from the advantages
    (`vmpo_estep`, detached) and log π_θ from ONE train-mode forward pass with dropout p. The exact
    expected weighted-MLE gradient ∇_θ E_mask[L_π] enumerates all 2^width masks; the single-pass
    gradients are averaged over `passes` draws (computed as `groups` forward passes of stacked copies of
    the batch, each copy with its own dropout masks: one copy is one single-pass gradient), and every parameter coordinate gets the z-score
    (mean − exact)/SE: for an unbiased estimator max |z| stays a few units and mean z² ≈ 1 (a bias grows
    |z| like √R). The eval-mode gradient (no dropout) is scored against the same SEs (`eval_max_abs_z`):
    it is not the expected gradient, which shows the test can tell the two apart at this R."""
    gi = generator(seed, "instance")
    model = _init_from(gi, DropoutMLP([cfg.obs_dim, cfg.hidden, cfg.actions], 0.0))
    x = _randn(gi, cfg.batch, cfg.obs_dim)
    y = torch.randint(cfg.actions, (cfg.batch,), generator=gi)
    adv = _randn(gi, cfg.batch, 1)
    log_w, _, _ = vmpo_estep(adv, torch.ones_like(adv), torch.tensor(algo.eta, dtype=D), epsilon_eta=algo.epsilon_eta,
                             topk_frac=algo.topk_frac)
    params = list(model.parameters())
    G = cfg.groups
    per_group = max(1, loop.count(cfg.passes, least=G) // G)

    def m_step_loss(logp_y: Tensor) -> Tensor:
        return vmpo_policy_loss(logp_y[:, None], log_w)[0]

    def flat_grad(loss: Tensor) -> Tensor:
        return torch.cat([gr.flatten() for gr in torch.autograd.grad(loss, params)])

    rows: Rows = []
    with seeded_global_rng(seed, "run"):
        for i, p in enumerate(cfg.ps):
            model.set_p(p)
            masks, prob = all_masks(cfg.hidden, p)
            logp_masked = model(x, masks=[masks]).gather(2, y[None, :, None].expand(len(masks), -1, 1))[..., 0]  # [M, B]
            expected = flat_grad(sum(pm * m_step_loss(lp) for pm, lp in zip(prob, logp_masked)))
            model.eval()
            eval_grad = flat_grad(m_step_loss(model(x).gather(1, y[:, None])[:, 0]))
            model.train()
            group_means = []
            for _ in range(G):  # one train-mode forward of `per_group` copies of the batch = that many single passes
                logp = model(x.repeat(per_group, 1)).gather(1, y.repeat(per_group)[:, None])[:, 0].reshape(per_group, -1)
                group_means.append(flat_grad(sum(m_step_loss(lp) for lp in logp) / per_group))
            means = torch.stack(group_means)
            mean, se = means.mean(0), means.std(0) / math.sqrt(G)
            live = se > 0
            z = (mean - expected)[live] / se[live]
            z_eval = (eval_grad - expected)[live] / se[live]
            rows += [(i, "p", p), (i, "max_abs_z", float(z.abs().max())), (i, "mean_z2", float((z * z).mean())),
                     (i, "eval_max_abs_z", float(z_eval.abs().max())),
                     (i, "mean_rel_err", float((mean - expected).norm() / expected.norm())),
                     (i, "eval_rel_err", float((eval_grad - expected).norm() / expected.norm())),
                     (i, "passes", float(G * per_group))]
    return rows


# ------------------------------------------------------------------------------------------------
# T11 — GRO unification ([GRO] §5, Table 1; the GRO equations restated in algorithms/gro.py)
# ------------------------------------------------------------------------------------------------

GRO_CASES: tuple[tuple[str, str, Any], ...] = (
    ("rloo", "rloo", RLOOConfig()),
    ("rloo[β=0.3, batch-norm A]", "rloo", RLOOConfig(beta=0.3, advantage_norm="batch")),
    ("remax", "remax", ReMaxConfig()),
    ("grpo", "grpo", GRPOConfig()),
    ("reinforce_pp", "reinforce_pp", REINFORCEPPConfig()),
    ("dpo", "dpo", DPOConfig()),
    ("dpo[β=2]", "dpo", DPOConfig(beta=2.0)),
    ("kto", "kto", KTOConfig()),
    ("kto[matched, λ_U=1.5]", "kto", KTOConfig(reference_point="matched", beta=0.5, undesirable_weight=1.5)),
    ("cpl", "cpl", CPLConfig()),
    ("cpl[α=0.7, λ=0.9]", "cpl", CPLConfig(alpha=0.7, bias=0.9)),
)
"""T11: (label, native method, its config) on [B, K] batches (one action per sample)."""


def gro_batch(g: torch.Generator, B: int, K: int) -> Batch:
    """A [B, K] batch with every field GRO's instances read, ties in context 0 (pairs pick by index),
    and KTO's mismatched completions (`logp_mismatched`, `logp_ref_mismatched`)."""
    score = _randn(g, B, K)
    score[0] = 0.7
    label = torch.where(score >= score.median(-1, keepdim=True).values, 1.0, -1.0).to(D)
    batch = Batch(logp=(_randn(g, B, K) - 2.0).requires_grad_(), score=score, mask=torch.ones(B, K, dtype=D),
                  logp_old=_randn(g, B, K) - 2.0, logp_ref=_randn(g, B, K) - 2.0, label=label, baseline=_randn(g, B))
    batch.logp_mismatched = _randn(g, B, K)
    batch.logp_ref_mismatched = _randn(g, B, K) - 1.0
    return batch


def check_gro_unified(cfg: GROUnifiedConfig, algo: Any, loop: TheoryLoopConfig, seed: int) -> Rows:
    """T11: ∇ of each native method's loss against ∇ of the GRO method configured as its instance
    (`gro.gro_instance`), on [B, K] batches; GRPO and REINFORCE++ also at token level (ragged sequences,
    clipping active) through their pure losses and `gro_instance_loss`."""
    g = generator(seed, "instance")
    rows: Rows = []
    for i, (label, name, native_cfg) in enumerate(GRO_CASES):
        batch = gro_batch(g, cfg.contexts, cfg.samples)
        native = _grad_logp(REGISTRY[name](native_cfg)(batch)[0], batch.logp)
        gro = _grad_logp(REGISTRY["gro"](gro_instance(name, native_cfg))(batch)[0], batch.logp)
        rows.append((i, f"grad_rel_err/{label}", rel_max_err(gro, native)))
    B, K, T = cfg.contexts, cfg.samples, cfg.tokens
    token_cases = [("grpo", GRPOConfig(reduction=r)) for r in ("sequence_mean", "token_mean", "sequence_sum")]
    token_cases += [("reinforce_pp", REINFORCEPPConfig(beta=0.1, reduction=r)) for r in ("token_mean", "sequence_mean")]
    for j, (name, native_cfg) in enumerate(token_cases, start=len(GRO_CASES)):
        logp = (0.3 * _randn(g, B, K, T) - 1.0).requires_grad_()
        old = logp.detach() + 0.3 * _randn(g, B, K, T)  # ratios e^{±0.3}: some clipped
        ref = logp.detach() + 0.2 * _randn(g, B, K, T)
        lengths = torch.randint(1, T + 1, (B, K), generator=g)
        mask = (torch.arange(T)[None, None, :] < lengths[..., None]).to(D)
        score = _randn(g, B, K)
        if name == "grpo":
            native_loss, m = grpo_loss(logp, old, ref, score, mask, clip_eps=native_cfg.clip_eps, beta=native_cfg.beta,
                                       reduction=native_cfg.reduction)
        else:
            native_loss, m = reinforce_pp_loss(logp, old, ref, score, mask, clip_eps=native_cfg.clip_eps, beta=native_cfg.beta,
                                               gamma=native_cfg.gamma, reduction=native_cfg.reduction)
        gro_l, _ = gro_instance_loss(gro_instance(name, native_cfg), token_logp=logp, token_mask=mask, score=score,
                                     token_logp_old=old, token_logp_ref=ref)
        rows.append((j, f"grad_rel_err/{name}[token, {native_cfg.reduction}]",
                     rel_max_err(_grad_logp(gro_l, logp), _grad_logp(native_loss, logp))))
        rows.append((j, f"clipfrac/{name}[token, {native_cfg.reduction}]", float(m["ratio/clipfrac"])))
    return rows


# ------------------------------------------------------------------------------------------------
# T12 — DAR's practical (sampled, importance-weighted) objective vs the closed-form target ([EM-LLM] §7)
# ------------------------------------------------------------------------------------------------


def check_dar_practical(cfg: DARPracticalConfig, algo: DARConfig, loop: TheoryLoopConfig, seed: int) -> Rows:
    """T12: (a) exact: on the enumerated space, π_t(y)·w(y) with w the weights of `dar_loss` equals the
    unnormalised closed form φ(y) = π_ref^{α/t} π_t^{β/t} exp(A/t) (eq. 7); (b) sampled: with y ~ π_t the
    per-outcome Monte Carlo estimate (1/N) Σ_i w_i 1[y_i = y] of the sampled loss's gradient weights is
    unbiased for φ(y) (z-scores over replicate batches), and the self-normalised weights converge to π*.
    The clip is lifted for (a) and (b); the default clip's bias is logged beside (`clip_rel_bias`).
    A/t ~ N(0, 1) so the weights are not degenerate."""
    _require(algo.baseline == "none" and algo.advantage_norm == "none",
             "dar-practical enumerates a fixed A(x, y): it needs baseline='none', advantage_norm='none'")
    gi, gr = generator(seed, "instance"), generator(seed, "run")
    n, N = cfg.outcomes, cfg.samples
    t = algo.alpha + algo.beta
    log_pt, log_pref = _categorical(gi, n), _categorical(gi, n)
    A = t * _randn(gi, n)
    log_phi = (algo.alpha / t) * log_pref + (algo.beta / t) * log_pt + A / t
    phi = log_phi.exp()
    unclipped = dataclasses.replace(algo, weight_clip=math.inf)

    def weights(y: Tensor, c: DARConfig) -> Tensor:  # per-sample w_i of the DAR loss on samples y [R, N]
        logp = torch.zeros(y.shape, dtype=D, requires_grad=True)
        loss, _ = dar_loss(logp, A[y], torch.ones(y.shape, dtype=D), log_pt[y], log_pref[y], alpha=c.alpha, beta=c.beta,
                           weight_clip=c.weight_clip, baseline=c.baseline, advantage_norm=c.advantage_norm)
        return -_grad_logp(loss, logp) * y.numel()

    every = torch.arange(n)[None]
    exact_err = rel_max_err(log_pt.exp() * weights(every, unclipped)[0], phi)
    R = loop.count(cfg.replicates, least=20)
    y = _sample(gr, log_pt, (R, N))
    onehot = F.one_hot(y, n).to(D)  # [R, N, n]
    per_rep = torch.einsum("rn,rny->ry", weights(y, unclipped), onehot) / N  # [R, n] estimates of φ
    z = (per_rep.mean(0) - phi) / (per_rep.std(0) / math.sqrt(R)).clamp_min(1e-300)
    clipped = torch.einsum("rn,rny->ry", weights(y, algo), onehot) / N
    target = torch.softmax(log_phi, -1)
    snis = per_rep / per_rep.sum(-1, keepdim=True).clamp_min(1e-300)
    return [(0, "exact_rel_err", exact_err), (0, "max_abs_z", float(z.abs().max())),
            (0, "mean_rel_err", rel_max_err(per_rep.mean(0), phi)),
            (0, "snis_tv", float(0.5 * (snis - target).abs().sum(-1).mean())),
            (0, "clip_rel_bias", rel_max_err(clipped.mean(0), phi)), (0, "t", t)]


# ------------------------------------------------------------------------------------------------
# The family
# ------------------------------------------------------------------------------------------------


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass(frozen=True)
class Check:
    claim: str
    task: str
    run: Callable[[Any, Any, TheoryLoopConfig, int], Rows]
    config: Any
    description: str


CHECKS: dict[str, Check] = {c.task: c for c in (
    Check("T1", "multikl-closed-form", check_multikl, MultiKLConfig(),
          "q* ∝ Π π_j^{λ_j/Λ} exp(A/Λ) from the GEMPI E-step vs a numerical maximiser ([EM-LLM] §10 eq. 23)"),
    Check("T2", "dar-to-vmpo", check_dar_to_vmpo, DARToVMPOConfig(),
          "DAR weights vs V-MPO weights: π_ref = π_t, and α → 0 at fixed α+β ([EM-SFT] §7)"),
    Check("T3", "ess-chi2", check_ess, ESSConfig(), "ESS of the E-step weights vs N/(1+χ²(q*‖π_t)) across Λ ([EM-LLM] §10)"),
    Check("T4", "snis-bias", check_snis_bias, SNISConfig(), "bias of the self-normalised M-step gradient and log Ẑ vs N ([EM-LLM] §10)"),
    Check("T5", "dpo-gradient", check_dpo_gradient, DPOGradientConfig(), "DPO autograd vs the closed-form gradient ([EM-LLM] §5)"),
    Check("T6", "ipo-variance", check_ipo_variance, IPOVarianceConfig(),
          "IPO's regulariser vs 2·Var_{π_ref}[log π_θ/π_ref] (004 App. E)"),
    Check("T7", "em-improvement", check_em_improvement, EMImprovementConfig(),
          "δ_{k+1} ∝ δ_k exp(f/τ) increases E[f] until a fixed point (004 App. C)"),
    Check("T8", "gempi-unified", check_gempi_unified, UnifiedEMConfig(),
          "generic GEMPI loss vs SFT, AWR, V-MPO, DAR, RL-EM ([EM-LLM] §10)"),
    Check("T9", "temperature-dual", check_temperature_dual, TemperatureDualConfig(),
          "V-MPO's dL_η/dη vs autograd; log-sum-exp finite up to |A|/η = 1e4 ([EM-SFT] §6)"),
    Check("T10", "dropout-ratio", check_dropout_ratio, DropoutRatioConfig(),
          "PPO's ratio, clip fraction and KL estimate at θ = θ_old under dropout p ([EM-SFT] §9)"),
    Check("T10", "dropout-em-gradient", check_dropout_em_gradient, DropoutGradientConfig(),
          "EM M-step gradient under dropout vs the exact expected gradient ([EM-SFT] §9, 000 §10)"),
    Check("T11", "gro-unified", check_gro_unified, GROUnifiedConfig(),
          "RLOO, ReMax, GRPO, REINFORCE++, DPO, KTO, CPL vs their GRO instances ([GRO] §5)"),
    Check("T12", "dar-practical", check_dar_practical, DARPracticalConfig(),
          "DAR's sampled importance-weighted loss vs the enumerated closed-form target ([EM-LLM] §7)"),
)}


def train(specs: list[RunSpec]) -> list[RunResult]:
    """Run the spec's check once per seed (each seed one random instance)."""
    results = []
    for spec in specs:
        rows = CHECKS[spec.task].run(spec.task_config, spec.algo_config, spec.train_config, spec.seed)
        results.append(RunResult(status="ok", rows=[(int(s), str(m), float(v)) for s, m, v in rows]))
    return results


FAMILY = Family(
    name="theory",
    train_config=TheoryLoopConfig,
    provides=Needs(min_samples=1 << 20, labels=True, logp_old=True, logp_ref=True, kl_ref=True, kl_old=True, values=True,
                   baseline=True),
    train=train,
    description="exact and statistical checks of the papers' theory on random finite instances (claims T1–T12)",
)

for _check in CHECKS.values():
    register_task(_check.task, FAMILY, _check.config, f"[{_check.claim}] {_check.description}")
