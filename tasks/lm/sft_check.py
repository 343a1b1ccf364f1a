"""Claim L8's run: SFT as the generic EM M-step with a delta target against `transformers`' cross-entropy, step for step.

Two copies of the suite's pretrained GPT-2 (`tasks.lm.models.pretrained`) are fine-tuned on the same SFT demonstrations
(`tasks.lm.corpora.sft_pairs`), in the same batches, with the same optimiser and the same dropout masks (the global torch
generator is re-seeded identically before each copy's forward pass, so both draw the same masks):
- copy A minimises the model's own causal-LM loss, `model(input_ids, labels=labels).loss` (token-mean cross-entropy over
  the response tokens);
- copy B minimises the registered algorithm's loss (`sft`: the GEMPI M-step with uniform, delta-target weights,
  `[EM-SFT] §6` eq. 2–3) on a `Batch` whose samples are the response tokens, each weighted by the
  E-step (the "Token-Level Form" of `[EM-SFT] §6`: per-token weights).
Step for step: before every step copy B is set to copy A's parameters, so each step compares two updates from the same
point (otherwise float rounding, ~1e-7 relative, compounds through the training dynamics and the trajectories drift
apart for reasons that have nothing to do with the losses). Both copies take plain SGD steps: Adam divides by √v, which turns float rounding in gradients that are exactly zero in
exact arithmetic (GPT-2's attention key biases: softmax is shift-invariant) into full-size steps of arbitrary sign, so
it would measure Adam's noise amplification, not the losses. After every step the run logs `check/grad_rel_diff`
(‖g_A − g_B‖ / ‖g_A‖), `check/max_param_diff` (the largest |θ_A − θ_B| after the two updates), `check/loss_diff` and
`check/loss` (copy A's cross-entropy, which trains as plain SFT).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from algorithms import REGISTRY as ALGORITHMS
from algorithms.base import Batch
from algorithms.config import ConfigError, check_choices, check_positive, check_range, field
from tasks.base import Device, RunResult, RunSpec
from tasks.lm import corpora
from tasks.lm.models import collate, load_causal_lm, pretrained, sft_example
from tasks.seeding import generator, stream_seed


@dataclass(frozen=True)
class LMSFTCheckConfig:
    """The L8 comparison: two SFT trainings of one pretrained model."""

    steps: int = field(50, "optimiser steps of each copy")
    batch_size: int = field(32, "demonstrations per step")
    lr: float = field(0.02, "SGD learning rate of both copies")
    dropout: float = field(0.1, "dropout p of both copies (identical masks)")
    device: Device = field("cpu", "where the loop keeps networks, batches and losses: 'cpu' or 'cuda' (the runner "
                                  "picks which GPU); the pretrained model is trained there too")

    def __post_init__(self):
        check_choices(self)
        check_positive(self, "steps", "batch_size", "lr")
        check_range(self, "dropout", 0.0, 1.0, hi_open=True)


def sft_check(spec: RunSpec, pretrain_cfg) -> RunResult:
    cfg: LMSFTCheckConfig = spec.train_config
    if spec.algo != "sft":
        raise ConfigError(f"the L8 check trains algorithm 'sft'; got {spec.algo!r}.")
    dev = torch.device(cfg.device)
    path = str(pretrained(pretrain_cfg, cfg.device))
    a, tokenizer = load_causal_lm(path, dropout=cfg.dropout)
    b, _ = load_causal_lm(path, dropout=cfg.dropout)
    a.to(dev).train()
    b.to(dev).train()
    method = ALGORITHMS["sft"](spec.algo_config).to(dev)
    opt_a, opt_b = torch.optim.SGD(a.parameters(), lr=cfg.lr), torch.optim.SGD(b.parameters(), lr=cfg.lr)
    pairs = corpora.sft_pairs(pretrain_cfg.language, cfg.steps * cfg.batch_size, seed=stream_seed(spec.seed, "l8/data"))
    cap = corpora.limits(pretrain_cfg.language)[1]
    gen = generator(spec.seed, "l8/order", dev)
    order = torch.randperm(len(pairs), generator=gen, device=dev).tolist()
    logged: list[torch.Tensor] = []
    for step in range(1, cfg.steps + 1):
        chosen = order[(step - 1) * cfg.batch_size: step * cfg.batch_size]
        data = {k: v.to(dev) for k, v in collate([sft_example(tokenizer, *pairs[i], cap) for i in chosen],
                                                 tokenizer.pad_token_id).items()}
        b.load_state_dict(a.state_dict())
        seed = stream_seed(spec.seed, f"l8/dropout/{step}")
        torch.manual_seed(seed)
        loss_a = a(**data).loss
        torch.manual_seed(seed)
        logits = b(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits
        labels = data["labels"][:, 1:]
        token_mask = labels != -100
        logp = F.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, labels.clamp_min(0)[..., None])[..., 0]
        tok = logp[token_mask][:, None]  # [N_tok, 1]: each response token a demonstration with its own weight
        loss_b, _ = method(Batch(logp=tok, score=torch.zeros_like(tok), mask=torch.ones_like(tok)))
        for opt, loss in ((opt_a, loss_a), (opt_b, loss_b)):
            opt.zero_grad(set_to_none=True)
            loss.backward()
        with torch.no_grad():
            ga = torch.cat([p.grad.reshape(-1) for p in a.parameters() if p.grad is not None])
            gb = torch.cat([p.grad.reshape(-1) for p in b.parameters() if p.grad is not None])
            grad_diff = (ga - gb).norm() / ga.norm().clamp_min(1e-30)
        opt_a.step()
        opt_b.step()
        with torch.no_grad():
            diff = torch.stack([(p - q).abs().max() for p, q in zip(a.parameters(), b.parameters())]).max()
        logged.append(torch.stack([grad_diff, diff, loss_a.detach(), loss_b.detach()]))
    rows: list[tuple[int, str, float]] = []
    for step, (grad_diff, diff, la, lb) in enumerate(torch.stack(logged).tolist(), 1):  # one copy off the device
        rows += [(step, "check/grad_rel_diff", grad_diff), (step, "check/max_param_diff", diff),
                 (step, "check/loss_diff", abs(la - lb)), (step, "check/loss", la)]
    return RunResult("ok", rows)
