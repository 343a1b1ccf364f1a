"""What every algorithm shares: the batch it sees, what it needs, and how it registers.

An algorithm is a frozen config dataclass plus a pure loss (see `common.py`, `estep.py`, `mstep.py`
and each method's file). `Method` is the thin adaptor a training loop holds: it owns the method's
dual variables (as `nn.Parameter`s, optimised by the loop's dual optimiser) and maps a `Batch` onto
the pure loss. A method file registers itself with `@register`, so adding an algorithm is one file.

Shapes (STYLE): `B` contexts (bandit instance, state, prompt), `K` samples per context.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

Metrics = dict[str, Tensor]


@dataclass
class Batch:
    """The tensors a loss sees. Optional fields are `None` when the task does not provide them.

    logp:      [B, K] log π_θ(y|x) of each sample under the current policy (differentiable).
    score:     [B, K] reward, Q-value or advantage of each sample (higher is better).
    mask:      [B, K] float {0, 1}: which samples are real (padding is 0).
    logp_old:  [B, K] log-prob under the sampling (behaviour) policy, detached.
    logp_ref:  [B, K] log-prob under the reference policy, detached.
    label:     [B, K] float: +1 accepted, -1 rejected, 0 unlabelled.
    kl_ref:    [B] closed-form KL(π_ref(·|x) ‖ π_θ(·|x)), differentiable in θ.
    kl_old:    [B] closed-form KL(π_old(·|x) ‖ π_θ(·|x)), differentiable in θ.
    value:     [B, K] value prediction V(x) of the current critic (differentiable), for methods with a critic.
    value_old: [B, K] value prediction at sampling time (detached), for value clipping.
    value_target: [B, K] regression target of the critic (returns), detached.
    baseline:  [B] a per-context reward baseline supplied by the task (ReMax: reward of the greedy output).
    entropy:   [B, K] entropy S(π_θ(·|x)) of the current policy at each sample's context (differentiable), for
               entropy bonuses (PPO's c_2).

    Token-level fields, set by tasks whose samples are sequences (LM RLHF); `logp`, `logp_old`, `logp_ref` are
    then the masked sums of these over T. Token-level losses (PPO, GRPO, REINFORCE++, GRO) read them through
    `tokens()`; every other loss sees the sequence-level fields only.
    token_logp, token_logp_old, token_logp_ref: [B, K, T] per-token log-probs (current differentiable; old, ref
               detached).
    token_mask: [B, K, T] float {0, 1}: real response tokens (the EOS included, padding 0).
    A token-level PPO batch also carries per-token `score` (advantages), `value`, `value_old`, `value_target`
    [B, K, T]; they are masked by `token_mask`.
    """

    logp: Tensor
    score: Tensor
    mask: Tensor
    logp_old: Tensor | None = None
    logp_ref: Tensor | None = None
    label: Tensor | None = None
    kl_ref: Tensor | None = None
    kl_old: Tensor | None = None
    value: Tensor | None = None
    value_old: Tensor | None = None
    value_target: Tensor | None = None
    baseline: Tensor | None = None
    entropy: Tensor | None = None
    token_logp: Tensor | None = None
    token_logp_old: Tensor | None = None
    token_logp_ref: Tensor | None = None
    token_mask: Tensor | None = None

    def tokens(self) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor]:
        """(token_logp, token_logp_old, token_logp_ref, token_mask), [B, K, T]: the token-level fields when the
        task set them, else each sample read as a sequence of one token (T = 1)."""
        if self.token_logp is not None:
            return self.token_logp, self.token_logp_old, self.token_logp_ref, self.token_mask
        one = lambda x: None if x is None else x[..., None]  # noqa: E731  [B, K] -> [B, K, 1]
        return self.logp[..., None], one(self.logp_old), one(self.logp_ref), self.mask[..., None]


@dataclass(frozen=True)
class Needs:
    """What an algorithm needs from a task's batch; the loop refuses combinations it cannot provide."""

    min_samples: int = 1
    """Smallest K (samples per context) the loss is defined for."""
    labels: bool = False
    """Accept/reject labels (`Batch.label`)."""
    logp_old: bool = False
    """Sampling-policy log-probs (`Batch.logp_old`)."""
    logp_ref: bool = False
    """Reference log-probs (`Batch.logp_ref`)."""
    kl_ref: bool = False
    """Closed-form KL to the reference (`Batch.kl_ref`)."""
    kl_old: bool = False
    """Closed-form KL to the sampling policy (`Batch.kl_old`)."""
    values: bool = False
    """A critic: `Batch.value`, `value_old`, `value_target`."""
    baseline: bool = False
    """A per-context reward baseline (`Batch.baseline`)."""

    def missing(self, provides: "Needs") -> list[str]:
        """Names of the needs that `provides` (what a task family offers) does not meet."""
        out = []
        for f in dataclasses.fields(self):
            want, have = getattr(self, f.name), getattr(provides, f.name)
            if f.name == "min_samples":
                if have < want:
                    out.append(f"min_samples={want} (task gives K={have})")
            elif want and not have:
                out.append(f.name)
        return out


class Method(nn.Module):
    """Adaptor from a `Batch` to a pure loss; owns the method's duals (if any) as parameters."""

    name: ClassVar[str]
    Config: ClassVar[type]
    needs: ClassVar[Needs] = Needs()
    summary: ClassVar[str | None] = None
    """One sentence for `emrl list`; by default the first paragraph of the method's module docstring."""

    def __init__(self, cfg: Any):
        super().__init__()
        self.cfg = cfg

    @classmethod
    def needs_for(cls, cfg: Any) -> Needs:
        """What this configuration needs; methods whose needs depend on the config override this."""
        return cls.needs

    def loss(self, batch: Batch) -> tuple[Tensor, Metrics]:
        raise NotImplementedError

    def forward(self, batch: Batch) -> tuple[Tensor, Metrics]:
        return self.loss(batch)


REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a `Method` available by its `name` to the suite."""
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"algorithm {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls


def dual_parameter(initial: float, floor: float = 1e-8) -> nn.Parameter:
    """A raw parameter whose `softplus(raw) + floor` starts at `initial` (duals stay positive)."""
    raw = torch.tensor(float(initial) - floor)
    return nn.Parameter(torch.where(raw > 20, raw, torch.log(torch.expm1(raw))))
