"""Token-level plumbing of the LM family: prompt batches, sampling with a KV cache, per-token log-probs, closed-form KL.

Layout (STYLE shapes: `B` sequences, `P` prompt tokens, `T` response tokens, `V` vocabulary):
- prompts are LEFT-padded `[B, P]` so every prompt ends at column P − 1 and generation appends on the right;
- responses are RIGHT-padded `[B, T]`: tokens after the first EOS are `pad_id` with mask 0; the EOS itself is a
  generated token (mask 1), so its log-prob is part of the sequence's log-prob;
- position ids count real tokens only (`cumsum(mask) − 1`), so a left-padded prompt gets the positions it would
  have alone: padding on either side changes no log-prob (tested).

`sample` is real autoregressive generation with the model's own KV cache (`past_key_values`) and an explicit
`torch.Generator`, so a run's samples depend on its seed only. It works for any `transformers` causal LM.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from algorithms.common import kl_categorical_logprobs


def encode_prompts(tokenizer, prompts: list[str]) -> tuple[Tensor, Tensor]:
    """`[BOS] prompt` token ids, LEFT-padded with the tokenizer's pad id.

    Returns: prompt_ids LongTensor [B, P], prompt_mask float [B, P] (1 on real tokens).
    """
    bos = tokenizer.bos_token_id
    rows = [([] if bos is None else [bos]) + tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1.0
    return ids, mask


def positions(mask: Tensor) -> Tensor:
    """Position ids that count real tokens only: cumsum(mask) − 1, clamped at 0 on left padding."""
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


@torch.no_grad()
def sample(model, prompt_ids: Tensor, prompt_mask: Tensor, *, max_new_tokens: int, temperature: float,
           generator: torch.Generator, eos_id: int, pad_id: int, greedy: bool = False) -> tuple[Tensor, Tensor]:
    """Sample up to `max_new_tokens` tokens per prompt from softmax(logits / temperature) (or argmax if greedy).

    The model runs in eval mode (no dropout: rollouts are collected as in `[EM-SFT] §9`, "Why PPO disables dropout")
    and is put back in its previous mode afterwards. Generation stops early once every row has emitted EOS.
    Returns: response_ids LongTensor [B, T] (right-padded with pad_id after the first EOS), response_mask float
    [B, T] (1 up to and including the first EOS).
    """
    if not greedy and not temperature > 0:
        raise ValueError(f"sample: temperature = {temperature!r} must be > 0 (or greedy=True)")
    was_training = model.training
    model.eval()
    try:
        mask = prompt_mask.long()
        out = model(input_ids=prompt_ids, attention_mask=mask, position_ids=positions(mask), use_cache=True)
        past, logits = out.past_key_values, out.logits[:, -1]
        pos = positions(mask)[:, -1]
        done = torch.zeros(prompt_ids.shape[0], dtype=torch.bool, device=prompt_ids.device)
        tokens, masks = [], []
        for _ in range(max_new_tokens):
            if greedy:
                nxt = logits.argmax(-1)
            else:
                probs = F.softmax(logits.float() / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]
            nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
            tokens.append(nxt)
            masks.append((~done).float())
            done = done | (nxt == eos_id)
            if bool(done.all()):
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            pos = pos + 1
            out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos[:, None],
                        past_key_values=past, use_cache=True)
            past, logits = out.past_key_values, out.logits[:, -1]
        return torch.stack(tokens, 1), torch.stack(masks, 1)
    finally:
        model.train(was_training)


def forward_response(model, prompt_ids: Tensor, prompt_mask: Tensor, response_ids: Tensor, response_mask: Tensor,
                     *, hidden: bool = False) -> tuple[Tensor, Tensor | None]:
    """Teacher-forced pass over `[prompt, response]`; the log-softmax at the positions that predict the response.

    Returns: logprobs [B, T, V] (log π(· | x, y_<t) for t = 1..T, float32), and, if `hidden`, the last layer's
    hidden states at the same positions [B, T + 1, H] shifted to include the state before the first response
    token (index 0: after the prompt; index t: after response token t) — the states a value head reads.
    """
    ids = torch.cat([prompt_ids, response_ids], dim=1)
    mask = torch.cat([prompt_mask, response_mask], dim=1).long()
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), output_hidden_states=hidden)
    p, t = prompt_ids.shape[1], response_ids.shape[1]
    logprobs = F.log_softmax(out.logits[:, p - 1:p + t - 1].float(), dim=-1)
    states = out.hidden_states[-1][:, p - 1:p + t] if hidden else None
    return logprobs, states


def gather_tokens(logprobs: Tensor, response_ids: Tensor, response_mask: Tensor) -> Tensor:
    """Per-token log π(y_t | x, y_<t) [B, T] from logprobs [B, T, V]; exactly 0 on padding."""
    tok = logprobs.gather(-1, response_ids[..., None])[..., 0]
    return torch.where(response_mask > 0, tok, torch.zeros_like(tok))


def token_kl(logq: Tensor, logp: Tensor, mask: Tensor) -> Tensor:
    """Closed-form per-token KL(q ‖ p) = Σ_v q(v) (log q(v) − log p(v)) [B, T] from full log-softmaxes [B, T, V];
    exactly 0 on padding. Differentiable in both arguments (detach the one that is a fixed policy)."""
    kl = kl_categorical_logprobs(logq, logp)
    return torch.where(mask > 0, kl, torch.zeros_like(kl))
