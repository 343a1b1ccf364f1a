"""Synthetic bandits: Rosenbrock, Sphere and Schwefel searched by a state-free Gaussian policy.

Source: `[PMPO] §5.1`. Each iteration the reference policy (a copy of the
policy refreshed every N = 100 steps) proposes K = 4 samples; the function values are the feedback
(minimised: score = −f); the top 2 are accepted, the other 2 rejected; one gradient step of the
algorithm's loss updates the policy. There is no state: each seed's bandit is one context (B = 1).

A whole seed sweep of one variant trains as one batch of independent policies: parameters are
stacked over seeds [S, D] and the algorithm's loss is `torch.func.vmap`-ed over seeds, so each seed
has its own duals and its own optimiser state, exactly as if it ran alone (tested:
vectorised == per-seed loop). Sampling noise and initial points come from per-seed generators.

Functions (Hansen et al. 2003, the paper's reference; all have optimum value 0):
    sphere(x)     = Σ_i x_i²                                            optimum x = 0
    rosenbrock(x) = Σ_{i<D} 100 (x_{i+1} − x_i²)² + (1 − x_i)²          optimum x = 1
    schwefel(x)   = Σ_i (Σ_{j≤i} x_j)²   (Schwefel's problem 1.2)       optimum x = 0
Deviations: the paper does not give the dimension, the initial distribution or the optimiser; we use
D = 10, μ_0 uniform in the task's init box (instance seed), σ_0 = 1, Adam; "Schwefel" is taken to be
Hansen et al.'s unimodal double-sum function, not the multimodal 418.98·D − Σ x sin √|x|. Samples are
not clipped to a domain (the Gaussian search is unbounded).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor
from torch.func import functional_call, vmap

from algorithms import REGISTRY as ALGORITHMS
from algorithms.base import Batch, Needs
from algorithms.common import diag_gaussian_logp, kl_diag_gaussian, top_k_mask
from algorithms.config import ConfigError, check_positive, field
from tasks.base import Family, RunResult, RunSpec, register_task
from tasks.seeding import generator


def sphere(x: Tensor) -> Tensor:
    """Σ x_i² over the last dim."""
    return (x * x).sum(-1)


def rosenbrock(x: Tensor) -> Tensor:
    """Σ_{i<D} 100 (x_{i+1} − x_i²)² + (1 − x_i)² over the last dim."""
    a, b = x[..., :-1], x[..., 1:]
    return (100.0 * (b - a * a) ** 2 + (1.0 - a) ** 2).sum(-1)


def schwefel(x: Tensor) -> Tensor:
    """Schwefel's problem 1.2: Σ_i (Σ_{j≤i} x_j)² over the last dim."""
    return (x.cumsum(-1) ** 2).sum(-1)


FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {"sphere": sphere, "rosenbrock": rosenbrock, "schwefel": schwefel}


@dataclass(frozen=True)
class BanditConfig:
    """A test function's instance: its dimension and where the search starts."""

    dim: int = field(10, "dimension D of the search space (the paper does not say; 10 here)")
    init_low: float = field(-5.0, "lower corner of the box μ_0 is drawn from (instance seed)")
    init_high: float = field(5.0, "upper corner of the box μ_0 is drawn from")

    def __post_init__(self):
        if self.dim < 2:
            raise ConfigError(f"BanditConfig.dim = {self.dim!r} is invalid: must be >= 2 (Rosenbrock couples neighbours).")
        if not self.init_low < self.init_high:
            raise ConfigError(f"BanditConfig.init_low = {self.init_low!r} must be < init_high = {self.init_high!r}.")


@dataclass(frozen=True)
class BanditLoopConfig:
    """The bandit training loop (`[PMPO] §5.1`)."""

    steps: int = field(2000, "gradient steps (one per iteration of 4 proposals)")
    samples: int = field(4, "proposals K per iteration; paper: 4")
    accept: int = field(2, "top proposals labelled accepted, the rest rejected; paper: 2")
    ref_period: int = field(100, "steps between refreshes of the reference (sampling) policy; paper: 100")
    lr: float = field(1e-2, "Adam learning rate of the policy mean and log-std")
    dual_lr: float = field(1e-2, "Adam learning rate of the algorithm's duals (η, α)")
    init_std: float = field(1.0, "initial standard deviation σ_0 of the search policy")
    log_every: int = field(50, "steps between logged rows")
    kl_limit: float = field(1e4, "a run whose KL(π_ref‖π_θ) exceeds this is recorded as diverged")

    def __post_init__(self):
        check_positive(self, "steps", "samples", "accept", "ref_period", "lr", "dual_lr", "init_std", "log_every", "kl_limit")
        if self.accept >= self.samples:
            raise ConfigError(f"BanditLoopConfig.accept = {self.accept} must be < samples = {self.samples} (some must be rejected).")


def _noise(seeds: list[int], start: int, stop: int, k: int, d: int, dtype) -> Tensor:
    """Standard-normal proposal noise for steps [start, stop) of each seed: [S, stop − start, K, D].

    Drawn from each seed's own "run" generator, in fixed chunks, so a seed's noise does not depend on
    which other seeds share its batch.
    """
    out = []
    for s in seeds:
        g = generator(s, f"run/{start}")
        out.append(torch.randn(stop - start, k, d, generator=g, dtype=dtype))
    return torch.stack(out)


CHUNK = 500


def train(specs: list[RunSpec]) -> list[RunResult]:
    """Train one policy per spec (specs differ only in seed), vectorised over seeds."""
    spec = specs[0]
    task, loop, f = spec.task_config, spec.train_config, FUNCTIONS[spec.task]
    seeds = [s.seed for s in specs]
    n, d, k = len(specs), task.dim, loop.samples
    dtype = torch.float64

    inits = [torch.rand(d, generator=generator(s, "instance"), dtype=dtype) for s in seeds]
    mu = (task.init_low + (task.init_high - task.init_low) * torch.stack(inits)).requires_grad_()
    log_std = torch.full((n, d), math.log(loop.init_std), dtype=dtype, requires_grad=True)
    mu_ref, log_std_ref = mu.detach().clone(), log_std.detach().clone()

    method = ALGORITHMS[spec.algo](spec.algo_config).to(dtype)
    duals = {name: p.detach()[None].repeat(n, *([1] * p.dim())).requires_grad_() for name, p in method.named_parameters()}
    opt = torch.optim.Adam([mu, log_std], lr=loop.lr, foreach=True)
    dual_opt = torch.optim.Adam(list(duals.values()), lr=loop.dual_lr, foreach=True) if duals else None
    needs = method.needs
    wanted = {"label": needs.labels, "logp_old": needs.logp_old, "logp_ref": needs.logp_ref, "kl_ref": needs.kl_ref, "kl_old": needs.kl_old}

    def per_seed(params: dict[str, Tensor], tensors: dict[str, Tensor]):
        return functional_call(method, params, (Batch(**tensors),))

    batched_loss = vmap(per_seed)
    alive = torch.ones(n, dtype=torch.bool)
    diverged: list[dict | None] = [None] * n
    logged: list[tuple[int, list[str], Tensor]] = []
    f0 = f(mu.detach())

    def log(step: int, extra: dict[str, Tensor]):
        with torch.no_grad():
            values = {"f": f(mu), "policy/std": log_std.exp().mean(-1), **extra}
        logged.append((step, list(values), torch.stack([v.to(dtype).reshape(n) for v in values.values()])))

    log(0, {})
    noise = None
    for step in range(loop.steps):
        if step % CHUNK == 0:
            noise = _noise(seeds, step, min(step + CHUNK, loop.steps), k, d, dtype)
        if step % loop.ref_period == 0:
            mu_ref, log_std_ref = mu.detach().clone(), log_std.detach().clone()
        y = mu_ref[:, None, :] + log_std_ref.exp()[:, None, :] * noise[:, step % CHUNK]  # [S, K, D]
        fy = f(y)
        score = -fy
        mask = torch.ones_like(score)
        logp = diag_gaussian_logp(y, mu[:, None, :], log_std[:, None, :])
        kl_ref = kl_diag_gaussian(mu_ref, log_std_ref, mu, log_std)  # [S]
        tensors = dict(logp=logp[:, None], score=score[:, None], mask=mask[:, None])
        if wanted["label"]:
            tensors["label"] = (2.0 * top_k_mask(score, mask, k=loop.accept) - 1.0)[:, None]
        if wanted["logp_ref"] or wanted["logp_old"]:
            logp_ref = diag_gaussian_logp(y, mu_ref[:, None, :], log_std_ref[:, None, :])[:, None]
            tensors.update({key: logp_ref for key in ("logp_ref", "logp_old") if wanted[key]})
        tensors.update({key: kl_ref[:, None] for key in ("kl_ref", "kl_old") if wanted[key]})
        loss, metrics = batched_loss(duals, tensors)

        bad = ~torch.isfinite(loss) | ~torch.isfinite(kl_ref) | (kl_ref.detach() > loop.kl_limit)
        if bool((bad & alive).any()):
            for i in torch.nonzero(bad & alive).flatten().tolist():
                reason = "non-finite loss" if not torch.isfinite(loss[i]) else f"KL(π_ref‖π_θ) = {kl_ref[i].item():.3g} > {loop.kl_limit:g}"
                diverged[i] = {"step": step, "reason": reason}
            alive &= ~bad
            if not alive.any():
                break

        opt.zero_grad(set_to_none=True)
        if dual_opt:
            dual_opt.zero_grad(set_to_none=True)
        if bool(alive.all()):
            loss.sum().backward()
        else:
            torch.where(alive, loss, torch.zeros_like(loss)).sum().backward()
            for p in [mu, log_std, *duals.values()]:
                if p.grad is not None:  # a diverged seed's gradient is zeroed; the others are untouched
                    p.grad.mul_(alive.reshape(-1, *([1] * (p.dim() - 1)))).nan_to_num_(0.0)
        opt.step()
        if dual_opt:
            dual_opt.step()

        if (step + 1) % loop.log_every == 0 or step + 1 == loop.steps:
            log(step + 1, {"loss": loss.detach(), "f_samples": fy.detach().mean(-1), "kl/ref": kl_ref.detach(),
                           **{key: v.detach() for key, v in metrics.items()}})

    results = []
    for i, s in enumerate(seeds):
        rows = [(0, "f_init", float(f0[i]))]
        stop = diverged[i]["step"] if diverged[i] else None
        for step, names, values in logged:
            if stop is not None and step > stop:
                break
            rows.extend((step, name, float(v)) for name, v in zip(names, values[:, i].tolist()))
        status = "diverged" if diverged[i] else "ok"
        results.append(RunResult(status=status, rows=rows, diverged=diverged[i]))
    return results


FAMILY = Family(
    name="bandit",
    train_config=BanditLoopConfig,
    provides=Needs(min_samples=4, labels=True, logp_old=True, logp_ref=True, kl_ref=True, kl_old=True),
    train=train,
    description="state-free Gaussian search on a test function ([PMPO] §5.1)",
)

register_task("sphere", FAMILY, BanditConfig(), "Sphere Σx², optimum 0 at x = 0")
register_task("rosenbrock", FAMILY, BanditConfig(init_low=-2.0, init_high=2.0), "Rosenbrock, optimum 0 at x = 1")
register_task("schwefel", FAMILY, BanditConfig(), "Schwefel 1.2 Σ(Σ_{j≤i} x_j)², optimum 0 at x = 0")
