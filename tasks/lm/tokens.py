"""Token-level plumbing of the LM family: prompt batches, sampling with a KV cache, per-token log-probs, closed-form KL.

Layout (STYLE shapes: `B` sequences, `P` prompt tokens, `T` response tokens, `V` vocabulary):
- prompts are LEFT-padded `[B, P]` so every prompt ends at column P − 1 and generation appends on the right;
- responses are RIGHT-padded `[B, T]`: tokens after the first EOS are `pad_id` with mask 0; the EOS itself is a
  generated token (mask 1), so its log-prob is part of the sequence's log-prob;
- position ids count real tokens only (`cumsum(mask) − 1`), so a left-padded prompt gets the positions it would
  have alone: padding on either side changes no log-prob (tested).

Log-probs and KLs are computed from the body's hidden states and the output head in chunks of at most `MAX_LOGITS` logits
(`token_logprobs`, `token_kl_hidden`): nothing holds [B, T, V], so a real vocabulary and length fit.

`sample` is real autoregressive generation with the model's own KV cache (`past_key_values`) and an explicit
`torch.Generator`, so a run's samples depend on its seed only. It works for any `transformers` causal LM.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

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
        out = model(input_ids=prompt_ids, attention_mask=mask, position_ids=positions(mask), use_cache=True,
                    logits_to_keep=1)  # only the last position samples: no [B, P, V]
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


MAX_LOGITS = 2 ** 22
"""Most logits one chunk of the output head may hold (16 MiB of float32): a chunk covers
max(1, MAX_LOGITS // (B·V)) response positions, so the largest tensor the log-prob and KL steps make is one chunk of
logits [B, chunk, V], and their peak memory grows with T·H (hidden states), never with T·V. A small model whose whole
[B, T, V] fits goes through in one chunk, without recomputation."""


def _chunk_size(hidden: Tensor, vocab: int, chunk: int | None) -> int:
    return chunk if chunk is not None else max(1, MAX_LOGITS // max(1, hidden.shape[0] * vocab))


def hidden_response(model, prompt_ids: Tensor, prompt_mask: Tensor, response_ids: Tensor,
                    response_mask: Tensor) -> Tensor:
    """Teacher-forced pass of the model's body (`model.base_model`, no output head) over `[prompt, response]`.

    Returns: the last layer's hidden states [B, T + 1, H] at the positions that predict each response token and one
    after: index t < T predicts response token t + 1 (index 0 is the state after the prompt), index T is the state
    after the last response token (what a value head reads at the end). For GPT-2 these are after the final layer
    norm, exactly what the output head reads."""
    ids = torch.cat([prompt_ids, response_ids], dim=1)
    mask = torch.cat([prompt_mask, response_mask], dim=1).long()
    out = model.base_model(input_ids=ids, attention_mask=mask, position_ids=positions(mask))
    p, t = prompt_ids.shape[1], response_ids.shape[1]
    return out.last_hidden_state[:, p - 1:p + t]


def output_head(model) -> torch.nn.Module:
    """The model's output head (hidden states -> logits), `get_output_embeddings()`."""
    return model.get_output_embeddings()


def frozen_head(model) -> torch.nn.Module:
    """A detached copy of the model's output head as it is now (π_old's head while θ moves on)."""
    head = copy.deepcopy(output_head(model))
    return head.requires_grad_(False)


def _chunked(fn, *tensors: Tensor, chunk: int) -> Tensor:
    """fn over chunks of dim 1, concatenated; with more than one chunk, each under activation checkpointing when
    autograd records, so the backward pass keeps the chunk's inputs only and recomputes its logits."""
    if tensors[0].shape[1] <= chunk:
        return fn(*tensors)
    outs = []
    for i in range(0, tensors[0].shape[1], chunk):
        parts = [x[:, i:i + chunk] for x in tensors]
        if torch.is_grad_enabled():
            outs.append(checkpoint(fn, *parts, use_reentrant=False))
        else:
            outs.append(fn(*parts))
    return torch.cat(outs, dim=1)


def token_logprobs(hidden: Tensor, head: torch.nn.Module, response_ids: Tensor, response_mask: Tensor, *,
                   chunk: int | None = None) -> Tensor:
    """Per-token log π(y_t | x, y_<t) [B, T] (float32) from hidden states [B, T(+1), H] and the output head, `chunk`
    positions at a time (default: `MAX_LOGITS`); exactly 0 on padding."""
    t = response_ids.shape[1]
    chunk = _chunk_size(hidden, head.weight.shape[0], chunk)

    def fn(h: Tensor, ids: Tensor) -> Tensor:
        logits = head(h).float()
        return logits.gather(-1, ids[..., None])[..., 0] - logits.logsumexp(-1)

    tok = _chunked(fn, hidden[:, :t], response_ids, chunk=chunk)
    return torch.where(response_mask > 0, tok, torch.zeros_like(tok))


def token_kl_hidden(hidden_q: Tensor, head_q: torch.nn.Module, hidden_p: Tensor, head_p: torch.nn.Module,
                    response_mask: Tensor, *, chunk: int | None = None) -> Tensor:
    """Closed-form per-token KL(q ‖ p) [B, T] between two policies given by (hidden states, output head), `chunk`
    positions at a time (default: `MAX_LOGITS`, counting both policies' logits); exactly 0 on padding.
    Differentiable in both (detach or freeze the fixed policy)."""
    t = response_mask.shape[1]
    chunk = _chunk_size(hidden_q, 2 * head_q.weight.shape[0], chunk)

    def fn(hq: Tensor, hp: Tensor) -> Tensor:
        return kl_categorical_logprobs(F.log_softmax(head_q(hq).float(), -1), F.log_softmax(head_p(hp).float(), -1))

    kl = _chunked(fn, hidden_q[:, :t], hidden_p[:, :t], chunk=chunk)
    return torch.where(response_mask > 0, kl, torch.zeros_like(kl))


def forward_response(model, prompt_ids: Tensor, prompt_mask: Tensor, response_ids: Tensor, response_mask: Tensor,
                     *, hidden: bool = False) -> tuple[Tensor, Tensor | None]:
    """The full log-softmax [B, T, V] at the positions that predict the response (and, if `hidden`, the states of
    `hidden_response`). A reference for tests and small vocabularies: the loop uses the chunked `token_logprobs`
    and `token_kl_hidden`, which never hold [B, T, V]."""
    states = hidden_response(model, prompt_ids, prompt_mask, response_ids, response_mask)
    logprobs = F.log_softmax(output_head(model)(states[:, :-1]).float(), dim=-1)
    return logprobs, (states if hidden else None)


def gather_tokens(logprobs: Tensor, response_ids: Tensor, response_mask: Tensor) -> Tensor:
    """Per-token log π(y_t | x, y_<t) [B, T] from logprobs [B, T, V]; exactly 0 on padding."""
    tok = logprobs.gather(-1, response_ids[..., None])[..., 0]
    return torch.where(response_mask > 0, tok, torch.zeros_like(tok))


def token_kl(logq: Tensor, logp: Tensor, mask: Tensor) -> Tensor:
    """Closed-form per-token KL(q ‖ p) = Σ_v q(v) (log q(v) − log p(v)) [B, T] from full log-softmaxes [B, T, V];
    exactly 0 on padding. Differentiable in both arguments (detach the one that is a fixed policy)."""
    kl = kl_categorical_logprobs(logq, logp)
    return torch.where(mask > 0, kl, torch.zeros_like(kl))
