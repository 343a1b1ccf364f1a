"""The model artifacts of the LM family: a GPT-2 pretrained and SFT'd by the suite, and a Bradley–Terry reward model.

Three stages, each a cached artifact built from a frozen config (`tasks.lm.corpora` for the text: the synthetic grammar
or real English):
  1. `pretrained(PretrainConfig)`: a `transformers` GPT2LMHeadModel built from `ModelConfig` (random init), trained
     with the causal-LM loss on "[BOS] doc [EOS]" for `documents` pretraining documents (the grammar: 1-4
     sentences; English: a speech), with the model's dropout; its metrics hold the held-out perplexity.
  2. `sft_model(SFTStageConfig)`: stage 1 fine-tuned on "[BOS] prompt response [EOS]" demonstrations, the loss on
     the response tokens and the final [EOS] only. Its metrics hold the quality of its samples at temperature 1 on
     held-out prompts (`corpora.quality`: the well-formed share, the mean gold reward, and the corpus's extras).
  3. `reward_model(RewardModelConfig)`: a GPT2ForSequenceClassification (one logit read at the last non-pad
     token) trained with the Bradley–Terry loss −log σ(r_w − r_l) on pairs of SFT samples for train prompts,
     labelled by the gold reward (ties redrawn); its held-out pairwise accuracy and Pearson correlation with gold
     on comparisons for held-out prompts are in its metrics. Initialised from the SFT model's body by default
     (InstructGPT, Ouyang et al. 2022 §3.5, initialises its RM from the SFT model), or from scratch.

Optimisation (all stages): AdamW (β1 = 0.9, β2 = the stage's `adam_beta2`, no weight decay), gradient norm clipped at 1, learning rate
warmed up linearly over the first `warmup` fraction of steps then decayed to 0 along a cosine. Batches are drawn
from consecutive random permutations of the examples (epochs) with a torch.Generator from `tasks.seeding`;
model initialisation and dropout use the global torch RNG seeded inside `torch.random.fork_rng` (the caller's
global RNG state is untouched). Each stage trains on the device it is given (`device`: a run builds the stages it
starts from on its own device); a model is initialised on the CPU and then moved, and the batch order's generator
lives on the device. Same config, device type, machine and thread count → identical weights.

Artifact cache: the directory `artifacts_root()/artifact_key(cfg)` holds `model.save_pretrained` and
`tokenizer.save_pretrained` output plus `emrl.json` (kind, key, resolved config, metrics, package versions).
A stage is built in a temporary directory `.<key>.<host>.<pid>.*.tmp` inside the root and renamed into place only
when complete, so an interrupted build never counts as present: an exception removes its folder, and the folder
of a killed process is removed by the next build of the same key on the same host once that pid is gone. Of two
processes racing on one key, the loser discards its copy. The key hashes the config only, with the device
type appended off the CPU (a CUDA-trained model differs in its numbers): delete the cache after changing the training
code.

Measured on the 2-core CPU (torch 2.13 CPU, transformers 5.23; numbers as recorded in the artifacts' `emrl.json`):
- real English (`tasks.lm.rlhf.ENGLISH_STAGES`, the L claims' task; a GPT-2 of 2 layers, width 64, dropout 0.1 in every
  stage, BPE of 1,024 tokens): pretraining 1,000 steps × 32 speeches ~100 s, held-out perplexity 77.9 per token on
  2,000 speeches of the five held-out plays; SFT 600 steps ~58 s, its samples at temperature 1 on 512 held-out prompts:
  mean gold (VADER compound) 0.024, 78% scored 0 (neutral), 66% end with [EOS] within 16 tokens, 5.9 words on
  average; the reward model (300 comparisons, L4's proxy) ~39 s, held-out pair accuracy 0.61 on 300 held-out
  comparisons (train 1.0), Pearson correlation with gold 0.23 (a pilot with 2,000 comparisons: 0.76, Pearson 0.56);
- the synthetic grammar (the defaults of the configs here, the tests' fast task): pretrain 500 steps ~27 s; SFT 2000
  steps ~65 s, its samples at temperature 1 on held-out prompts 96% grammatical, 84% on topic, mean gold reward 0.69;
  reward model (2000 comparisons) ~31 s, held-out accuracy 0.90, Pearson correlation with gold 0.77; the
  300-comparison proxy ~26 s, held-out accuracy 0.87 (train loss ~0).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from algorithms.config import ConfigError, check_choices, check_positive, check_range, field
from tasks.base import Device
from tasks.lm import corpora
from tasks.lm import language as lang
from tasks.lm.corpora import Corpus
from tasks.lm.language import LanguageConfig
from tasks.seeding import generator, stream_seed

if TYPE_CHECKING:
    from transformers import GPT2Config, PreTrainedModel, PreTrainedTokenizerBase

DROPOUT_FIELDS = ("resid_pdrop", "embd_pdrop", "attn_pdrop", "hidden_dropout_prob", "attention_probs_dropout_prob",
                  "attention_dropout", "hidden_dropout", "dropout")
"""Config fields that `load_causal_lm(dropout=...)` overrides, where the model's config has them."""
RESPONSE_TOKENS = lang.MAX_SENTENCE_WORDS + 1
"""Default cap on generated tokens: the longest sentence and its [EOS]."""
PROMPT_TOKENS = lang.MAX_SENTENCE_WORDS + 1
"""Longest prompt in tokens: [BOS] and the longest sentence."""
METADATA = "emrl.json"
KINDS = {"PretrainConfig": "pretrain", "SFTStageConfig": "sft", "RewardModelConfig": "rm"}


def _check_ints(cfg: Any, *names: str) -> None:
    for name in names:
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ConfigError(f"{type(cfg).__name__}.{name} = {v!r} is invalid: must be an integer.")


def _check_type(cfg: Any, name: str, cls: type) -> None:
    v = getattr(cfg, name)
    if not isinstance(v, cls):
        raise ConfigError(f"{type(cfg).__name__}.{name} = {v!r} is invalid: must be a {cls.__name__}.")


def _check_lr_fields(cfg: Any) -> None:
    _check_ints(cfg, "steps", "batch_size", "seed")
    check_positive(cfg, "steps", "batch_size", "lr")
    check_range(cfg, "warmup", 0.0, 1.0, hi_open=True)
    check_range(cfg, "adam_beta2", 0.0, 1.0, hi_open=True)
    if not math.isfinite(cfg.lr):
        raise ConfigError(f"{type(cfg).__name__}.lr = {cfg.lr!r} is invalid: must be finite.")


# ------------------------------------------------------------------------------------------------ configs


@dataclass(frozen=True)
class ModelConfig:
    """The size of a GPT-2 built from scratch (`gpt2_config`)."""

    n_layer: int = field(2, "transformer blocks")
    n_head: int = field(4, "attention heads per block (must divide n_embd)")
    n_embd: int = field(64, "width of the residual stream")
    n_positions: int = field(40, "longest sequence in tokens (learned position embeddings)")
    dropout: float = field(0.0, "resid_pdrop, embd_pdrop and attn_pdrop while training")
    activation: Literal["gelu_pytorch_tanh", "gelu_new"] = field(
        "gelu_pytorch_tanh", "the MLP's GELU: GPT-2's tanh approximation by PyTorch's fused kernel, or transformers' "
                             "Python `gelu_new` (the same function up to rounding; the fused one makes the default "
                             "model's forward+backward ~20% faster on one CPU thread)")

    def __post_init__(self):
        check_choices(self)
        _check_ints(self, "n_layer", "n_head", "n_embd", "n_positions")
        check_positive(self, "n_layer", "n_head", "n_embd", "n_positions")
        check_range(self, "dropout", 0.0, 1.0, hi_open=True)
        if self.n_embd % self.n_head:
            raise ConfigError(f"ModelConfig.n_embd = {self.n_embd!r} is invalid: must be a multiple of n_head = "
                              f"{self.n_head}.")


@dataclass(frozen=True)
class PretrainConfig:
    """Stage 1: causal-LM pretraining of a fresh GPT-2 on the language's documents ("[BOS] doc [EOS]", truncated to
    n_positions tokens: ~3% of default documents are longer and lose their tail and [EOS])."""

    language: Corpus = field(LanguageConfig(), "the corpus: the synthetic grammar (tasks.lm.language) or real English "
                                               "(tasks.lm.english.EnglishConfig)")
    model: ModelConfig = field(ModelConfig(), "the GPT-2's size")
    documents: int = field(20_000, "pretraining documents (1-4 sentences each)")
    steps: int = field(500, "optimiser steps")
    batch_size: int = field(64, "documents per step")
    lr: float = field(5e-3, "peak AdamW learning rate")
    adam_beta2: float = field(0.95, "AdamW's second-moment decay")
    warmup: float = field(0.05, "fraction of steps with linear warmup, then cosine decay to 0")
    seed: int = field(0, "seed of the documents, the init and the batch order (tasks.seeding streams)")

    def __post_init__(self):
        corpora.check(self.language)
        _check_type(self, "model", ModelConfig)
        _check_ints(self, "documents")
        check_positive(self, "documents")
        _check_lr_fields(self)


@dataclass(frozen=True)
class SFTStageConfig:
    """Stage 2: supervised fine-tuning of stage 1 on (prompt, response) demonstrations; loss on response + [EOS]."""

    pretrain: PretrainConfig = field(PretrainConfig(), "stage 1, the model fine-tuned here")
    pairs: int = field(20_000, "demonstrations (distinct train prompts)")
    steps: int = field(2000, "optimiser steps")
    batch_size: int = field(64, "demonstrations per step")
    lr: float = field(1e-3, "peak AdamW learning rate")
    adam_beta2: float = field(0.999, "AdamW's second-moment decay")
    warmup: float = field(0.05, "fraction of steps with linear warmup, then cosine decay to 0")
    eval_prompts: int = field(512, "held-out prompts sampled (temperature 1) for the artifact's quality metrics")
    seed: int = field(0, "seed of the demonstrations, the batch order and the evaluation samples")

    def __post_init__(self):
        _check_type(self, "pretrain", PretrainConfig)
        _check_ints(self, "pairs", "eval_prompts")
        check_positive(self, "pairs", "eval_prompts")
        _check_lr_fields(self)
        need = sum(corpora.limits(self.pretrain.language))
        if self.pretrain.model.n_positions < need:
            raise ConfigError(f"SFTStageConfig.pretrain.model.n_positions = {self.pretrain.model.n_positions!r} is "
                              f"invalid: must be >= {need} ([BOS] prompt response [EOS] of the longest sentences).")


@dataclass(frozen=True)
class RewardModelConfig:
    """Stage 3: a Bradley–Terry reward model on gold-labelled pairs of SFT samples."""

    sft: SFTStageConfig = field(SFTStageConfig(), "stage 2, the policy whose samples are compared")
    model: ModelConfig = field(ModelConfig(), "the reward model's size (must equal the SFT model's if init='sft')")
    init: Literal["sft", "scratch"] = field("sft", "'sft': the SFT model's transformer body and a fresh score head "
                                                   "(InstructGPT §3.5); 'scratch': random init")
    pairs: int = field(2000, "train comparisons (distinct train prompts, two untied samples each)")
    heldout_fraction: float = field(0.2, "held-out comparisons (held-out prompts) as a fraction of `pairs`")
    steps: int = field(500, "optimiser steps")
    batch_size: int = field(64, "comparisons per step")
    lr: float = field(1e-3, "peak AdamW learning rate")
    adam_beta2: float = field(0.999, "AdamW's second-moment decay")
    warmup: float = field(0.05, "fraction of steps with linear warmup, then cosine decay to 0")
    temperature: float = field(1.0, "sampling temperature of the SFT policy")
    max_new_tokens: int = field(RESPONSE_TOKENS, "cap on generated tokens per sample")
    max_redraws: int = field(50, "a prompt whose two samples tie is redrawn at most this often (else ConfigError)")
    seed: int = field(0, "seed of the prompts, the samples, the init and the batch order")

    def __post_init__(self):
        _check_type(self, "sft", SFTStageConfig)
        _check_type(self, "model", ModelConfig)
        check_choices(self)
        _check_ints(self, "pairs", "max_new_tokens", "max_redraws")
        check_positive(self, "pairs", "max_new_tokens", "max_redraws", "temperature")
        check_range(self, "heldout_fraction", 0.0, 1.0, lo_open=True)
        _check_lr_fields(self)
        if self.init == "sft" and self.model != self.sft.pretrain.model:
            raise ConfigError(f"RewardModelConfig.model = {self.model!r} is invalid with init='sft': must equal the "
                              f"SFT model's {self.sft.pretrain.model!r} (or use init='scratch').")
        prompt_tokens = corpora.limits(self.sft.pretrain.language)[0]
        if self.model.n_positions < prompt_tokens + self.max_new_tokens:
            raise ConfigError(f"RewardModelConfig.max_new_tokens = {self.max_new_tokens!r} is invalid: must be <= "
                              f"model.n_positions - {prompt_tokens} = {self.model.n_positions - prompt_tokens}.")
        if self.sft.pretrain.model.n_positions < prompt_tokens + self.max_new_tokens:
            raise ConfigError(f"RewardModelConfig.max_new_tokens = {self.max_new_tokens!r} is invalid: must be <= "
                              f"the SFT model's n_positions - {prompt_tokens}.")

    @property
    def heldout_pairs(self) -> int:
        """Held-out comparisons: round(heldout_fraction · pairs), at least 1."""
        return max(1, round(self.heldout_fraction * self.pairs))


def gpt2_config(cfg: ModelConfig, tokenizer: "PreTrainedTokenizerBase") -> "GPT2Config":
    """The `transformers.GPT2Config` of `cfg` for `tokenizer`'s vocabulary and bos/eos/pad ids. The MLP's activation
    is `cfg.activation`."""
    from transformers import GPT2Config

    return GPT2Config(vocab_size=len(tokenizer), n_positions=cfg.n_positions, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
                      n_head=cfg.n_head, activation_function=cfg.activation,
                      resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id)


# ------------------------------------------------------------------------------------------------ examples


def pretrain_example(tokenizer: "PreTrainedTokenizerBase", doc: str, max_len: int) -> tuple[list[int], list[int]]:
    """(input ids, labels) of "[BOS] doc [EOS]" truncated to `max_len` tokens; labels = ids (every token counts)."""
    ids = [tokenizer.bos_token_id, *tokenizer(doc, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    ids = ids[:max_len]
    return ids, list(ids)


def sft_example(tokenizer: "PreTrainedTokenizerBase", prompt: str, response: str,
                max_response_tokens: int | None = None) -> tuple[list[int], list[int]]:
    """(input ids, labels) of "[BOS] prompt response [EOS]": labels −100 on [BOS] and the prompt, the ids on the
    response and the final [EOS] (HF shifts labels inside the loss). A response longer than `max_response_tokens`
    (with its [EOS]) is cut to fit, the [EOS] kept: the policy's own responses have that cap."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r = tokenizer(response, add_special_tokens=False)["input_ids"]
    if max_response_tokens is not None:
        r = r[:max_response_tokens - 1]
    r = [*r, tokenizer.eos_token_id]
    ids = [tokenizer.bos_token_id, *p, *r]
    return ids, [-100] * (1 + len(p)) + r


def collate(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, Tensor]:
    """Right-pad (ids, labels) rows to the longest: input_ids [B, L], attention_mask [B, L], labels [B, L] (−100 on
    padding)."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        labels[i, :len(lab)] = torch.tensor(lab, dtype=torch.long)
        mask[i, :len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def pack_right(prompt_ids: Tensor, prompt_mask: Tensor, response_ids: Tensor, response_mask: Tensor,
               pad_id: int) -> tuple[Tensor, Tensor]:
    """"[BOS] prompt response" as one RIGHT-padded sequence from a left-padded prompt and a right-padded response
    (`tasks.lm.tokens` layout): the real tokens of each row in order, then pad_id. The reward model's input.

    Returns: ids LongTensor [B, P + T], mask long [B, P + T]."""
    ids = torch.cat([prompt_ids, response_ids], dim=1)
    mask = torch.cat([prompt_mask, response_mask], dim=1).long()
    order = torch.argsort(1 - mask, dim=1, stable=True)  # real tokens first, each group in its original order
    ids, mask = ids.gather(1, order), mask.gather(1, order)
    return torch.where(mask > 0, ids, torch.full_like(ids, pad_id)), mask


def reward_scores(model: "PreTrainedModel", prompt_ids: Tensor, prompt_mask: Tensor, response_ids: Tensor,
                  response_mask: Tensor, pad_id: int) -> Tensor:
    """The reward model's score of each (prompt, response) [B] (float32), read at the last real token of the
    right-packed "[BOS] prompt response" (`pack_right`). Gradients flow if enabled by the caller."""
    ids, mask = pack_right(prompt_ids, prompt_mask, response_ids, response_mask, pad_id)
    return model(input_ids=ids, attention_mask=mask).logits[:, 0].float()


def decode_responses(tokenizer: "PreTrainedTokenizerBase", response_ids: Tensor) -> list[str]:
    """Response ids [B, T] as text with the literal [EOS]/[PAD] kept (what `gold_reward` reads)."""
    return tokenizer.batch_decode(response_ids.tolist(), skip_special_tokens=False)


# ------------------------------------------------------------------------------------------------ training


def lr_factor(step: int, steps: int, warmup: float) -> float:
    """Multiplier of the peak learning rate at optimiser step `step` (0-based): linear warmup over
    ceil(warmup·steps) steps to 1, then cosine decay to 0 at `steps`."""
    w = math.ceil(warmup * steps)
    if step < w:
        return (step + 1) / w
    progress = (step - w) / max(1, steps - w)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _batches(n: int, batch_size: int, steps: int, gen: torch.Generator):
    """Index batches from consecutive random permutations of range(n)."""
    buf = torch.empty(0, dtype=torch.long, device=gen.device)
    for _ in range(steps):
        while len(buf) < batch_size:
            buf = torch.cat([buf, torch.randperm(n, generator=gen, device=gen.device)])
        yield buf[:batch_size]
        buf = buf[batch_size:]


def _train(model: torch.nn.Module, loss_fn: Callable[[Tensor], Tensor], n: int, cfg: Any,
           gen: torch.Generator) -> list[float]:
    """Minimise loss_fn(batch indices) over n examples with AdamW (module docstring) as the stage config `cfg`
    sets it (steps, batch_size, lr, adam_beta2, warmup), in batches of indices on `gen`'s device; the loss per step."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, cfg.adam_beta2), weight_decay=0.0)
    model.train()
    losses = []
    for step, idx in enumerate(_batches(n, cfg.batch_size, cfg.steps, gen)):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(step, cfg.steps, cfg.warmup)
        loss = loss_fn(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.detach())
    model.eval()
    return torch.stack(losses).tolist()  # one device-to-host copy, not one per step


def _to(data: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device) for k, v in data.items()}


def _lm_loss_fn(model, data: dict[str, Tensor]) -> Callable[[Tensor], Tensor]:
    def loss_fn(idx: Tensor) -> Tensor:
        mask = data["attention_mask"][idx]
        width = int(mask.sum(1).max())
        return model(input_ids=data["input_ids"][idx, :width], attention_mask=mask[:, :width],
                     labels=data["labels"][idx, :width]).loss

    return loss_fn


def _final_loss(losses: list[float]) -> float:
    """Mean training loss over the last 5% of steps (at least 1)."""
    k = max(1, len(losses) // 20)
    return float(np.mean(losses[-k:]))


# ------------------------------------------------------------------------------------------------ artifact cache


def artifacts_root() -> Path:
    """Where artifacts live: $EMRL_ARTIFACTS if set, else <repo root>/results/artifacts."""
    env = os.environ.get("EMRL_ARTIFACTS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "results" / "artifacts"


def artifact_key(cfg: PretrainConfig | SFTStageConfig | RewardModelConfig, device: Device = "cpu") -> str:
    """"<kind>-<first 16 hex digits of sha256(canonical JSON of dataclasses.asdict(cfg))>", kind in pretrain/sft/rm,
    then "-<device>" for a stage trained off the CPU (CPU keys predate devices and stay as they were)."""
    kind = KINDS.get(type(cfg).__name__)
    if kind is None or not dataclasses.is_dataclass(cfg):
        raise ConfigError(f"artifact_key got a {type(cfg).__name__}: must be one of {', '.join(KINDS)}.")
    canonical = json.dumps(dataclasses.asdict(cfg), sort_keys=True, separators=(",", ":"), allow_nan=False)
    key = f"{kind}-{hashlib.sha256(canonical.encode()).hexdigest()[:16]}"
    return key if device == "cpu" else f"{key}-{device}"


def _versions() -> dict[str, str]:
    import tokenizers
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "numpy": np.__version__}


def read_metadata(path: str | os.PathLike) -> dict:
    """The `emrl.json` of an artifact directory: kind, key, config, metrics, versions."""
    return json.loads((Path(path) / METADATA).read_text())


def _remove_abandoned(root: Path, key: str) -> None:
    """Delete temporary build folders of `key` left by killed processes of this host (their pid is gone)."""
    prefix = f".{key}.{socket.gethostname()}."
    for tmp in root.glob(f".{key}.*.tmp"):
        pid = tmp.name[len(prefix):].split(".")[0] if tmp.name.startswith(prefix) else ""
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except OSError:  # alive under another user: not ours to judge
            pass


def _cached(cfg, device: Device, build: Callable[[Path], dict]) -> Path:
    """The artifact directory of `cfg` trained on `device`, built by build(tmp_dir) -> metrics if missing (module
    docstring: atomic)."""
    root = artifacts_root()
    key = artifact_key(cfg, device)
    final = root / key
    if (final / METADATA).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(root, key)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.{socket.gethostname()}.{os.getpid()}.", suffix=".tmp", dir=root))
    try:
        start = time.perf_counter()
        metrics = build(tmp)
        metrics["time/wall_s"] = time.perf_counter() - start
        metrics = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
        meta = {"kind": KINDS[type(cfg).__name__], "key": key, "config": dataclasses.asdict(cfg), "device": device,
                "metrics": metrics, "versions": _versions()}
        (tmp / METADATA).write_text(json.dumps(meta, indent=2, sort_keys=True, allow_nan=False) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes it private to this user
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / METADATA).is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished first: keep its copy
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' logging at error level inside the block, restored afterwards."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def pretrained(cfg: PretrainConfig, device: Device = "cpu") -> Path:
    """The directory of the stage-1 artifact for `cfg` trained on `device`, trained now if not cached."""
    return _cached(cfg, device, lambda out: _build_pretrained(cfg, out, device))


def _build_pretrained(cfg: PretrainConfig, out: Path, device: Device) -> dict:
    from transformers import GPT2LMHeadModel

    dev = torch.device(device)
    tokenizer = corpora.tokenizer(cfg.language)
    docs = corpora.documents(cfg.language, cfg.documents, stream_seed(cfg.seed, "pretrain-data"))
    data = collate([pretrain_example(tokenizer, d, cfg.model.n_positions) for d in docs], tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(cfg.seed, "pretrain-init"))
        model = GPT2LMHeadModel(gpt2_config(cfg.model, tokenizer)).to(dev)
        losses = _train(model, _lm_loss_fn(model, _to(data, dev)), len(docs), cfg,
                        generator(cfg.seed, "pretrain", dev))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    heldout = corpora.documents(cfg.language, HELDOUT_DOCUMENTS, stream_seed(cfg.seed, "pretrain-heldout"), "heldout")
    nll = heldout_nll(model, collate([pretrain_example(tokenizer, d, cfg.model.n_positions) for d in heldout],
                                     tokenizer.pad_token_id))
    return {"train/loss": _final_loss(losses), "train/loss_first": losses[0],
            "heldout/nll": nll, "heldout/perplexity": math.exp(nll), "heldout/documents": float(len(heldout)),
            "data/truncated": float(np.mean([len(ids) + 2 > cfg.model.n_positions
                                             for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]]))}


HELDOUT_DOCUMENTS = 2000
"""Held-out documents of the base model's perplexity (for English, speeches of the held-out plays)."""


@torch.no_grad()
def heldout_nll(model, data: dict[str, Tensor], chunk: int = 256) -> float:
    """Mean negative log-likelihood per predicted token (nats) of collated documents, in eval mode: its exp is the
    perplexity (per token of the corpus's tokenizer)."""
    model.eval()
    total = count = 0.0
    for i in range(0, len(data["input_ids"]), chunk):
        batch = _to({k: v[i:i + chunk] for k, v in data.items()}, model.device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        labels = batch["labels"][:, 1:]
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                              reduction="sum")
        total += float(nll)
        count += float((labels != -100).sum())
    return total / max(count, 1.0)


def sft_model(cfg: SFTStageConfig, device: Device = "cpu") -> Path:
    """The directory of the stage-2 artifact for `cfg` trained on `device` (building stage 1 first if needed)."""
    base = pretrained(cfg.pretrain, device)
    return _cached(cfg, device, lambda out: _build_sft(cfg, base, out, device))


def _build_sft(cfg: SFTStageConfig, base: Path, out: Path, device: Device) -> dict:
    from transformers import GPT2LMHeadModel

    dev = torch.device(device)
    language = cfg.pretrain.language
    tokenizer = corpora.tokenizer(language)
    pairs = corpora.sft_pairs(language, cfg.pairs, stream_seed(cfg.seed, "sft-data"))
    cap = corpora.limits(language)[1]
    data = collate([sft_example(tokenizer, p, r, cap) for p, r in pairs], tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(cfg.seed, "sft-init"))
        model = GPT2LMHeadModel.from_pretrained(base).to(dev)
        losses = _train(model, _lm_loss_fn(model, _to(data, dev)), len(pairs), cfg,
                        generator(cfg.seed, "sft", dev))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    metrics = {"train/loss": _final_loss(losses), "train/loss_first": losses[0]}
    heldout = corpora.prompts(language, "heldout", cfg.eval_prompts, stream_seed(cfg.seed, "sft-eval-prompts"))
    gen = generator(cfg.seed, "sft-eval", dev)
    responses = _sample_texts(model, tokenizer, heldout, temperature=1.0, max_new_tokens=corpora.limits(language)[1],
                              gen=gen)
    metrics.update(corpora.quality(language, heldout, responses))
    return metrics


def _sample_ids(model, tokenizer, prompts: Sequence[str], *, temperature: float, max_new_tokens: int,
                gen: torch.Generator, chunk: int = 512) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Samples for `prompts` in chunks: [(prompt_ids, prompt_mask, response_ids, response_mask)] per chunk, on the
    model's device."""
    from tasks.lm.tokens import encode_prompts, sample

    out = []
    for i in range(0, len(prompts), chunk):
        pids, pmask = (x.to(model.device) for x in encode_prompts(tokenizer, list(prompts[i:i + chunk])))
        rids, rmask = sample(model, pids, pmask, max_new_tokens=max_new_tokens, temperature=temperature,
                             generator=gen, eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id)
        out.append((pids, pmask, rids, rmask))
    return out


def _sample_texts(model, tokenizer, prompts: Sequence[str], *, temperature: float, max_new_tokens: int,
                  gen: torch.Generator) -> list[str]:
    chunks = _sample_ids(model, tokenizer, prompts, temperature=temperature, max_new_tokens=max_new_tokens, gen=gen)
    return [text for _, _, rids, _ in chunks for text in decode_responses(tokenizer, rids)]


# ------------------------------------------------------------------------------------------------ reward model


def reward_model(cfg: RewardModelConfig, device: Device = "cpu") -> Path:
    """The directory of the stage-3 artifact for `cfg` trained on `device` (building stages 1-2 first if needed)."""
    policy = sft_model(cfg.sft, device)
    return _cached(cfg, device, lambda out: _build_reward_model(cfg, policy, out, device))


@dataclass(frozen=True)
class Comparisons:
    """Gold-labelled comparisons: the right-padded "[BOS] prompt response" of each winner and loser [N, L]."""

    chosen_ids: Tensor
    chosen_mask: Tensor
    rejected_ids: Tensor
    rejected_mask: Tensor
    gold_chosen: np.ndarray
    gold_rejected: np.ndarray
    redraws: int
    """Pairs drawn again because the two samples tied."""
    grammatical: float
    """Fraction of grammatical samples among all drawn."""

    def to(self, device: torch.device) -> "Comparisons":
        moved = {k: getattr(self, k).to(device) for k in ("chosen_ids", "chosen_mask", "rejected_ids", "rejected_mask")}
        return dataclasses.replace(self, **moved)


def _right_padded(rows: Sequence[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids, mask


def comparisons(policy, tokenizer, prompts: Sequence[str], *, temperature: float, max_new_tokens: int,
                gen: torch.Generator, max_redraws: int, language: Corpus = LanguageConfig()) -> Comparisons:
    """One untied comparison per prompt, in prompt order: two samples of `policy` labelled by `gold_reward`; a tied
    pair (equal gold) is drawn again, at most `max_redraws` times per prompt (then ConfigError)."""
    pad = tokenizer.pad_token_id
    found: dict[int, tuple[list[int], list[int], float, float]] = {}
    pending = list(range(len(prompts)))
    drawn = grammatical = redraws = 0
    for _ in range(max_redraws + 1):
        if not pending:
            break
        twice = [prompts[i] for i in pending for _ in range(2)]
        seqs, texts = [], []
        for pids, pmask, rids, rmask in _sample_ids(policy, tokenizer, twice, temperature=temperature,
                                                    max_new_tokens=max_new_tokens, gen=gen):
            ids, mask = pack_right(pids, pmask, rids, rmask, pad)
            seqs += [row[m > 0].tolist() for row, m in zip(ids.cpu(), mask.cpu())]
            texts += decode_responses(tokenizer, rids)
        gold = corpora.gold_rewards(language, twice, texts)
        drawn += len(texts)
        grammatical += sum(corpora.well_formed(language, t) for t in texts)
        still = []
        for j, i in enumerate(pending):
            a, b = 2 * j, 2 * j + 1
            if gold[a] == gold[b]:
                still.append(i)
            else:
                w, lo = (a, b) if gold[a] > gold[b] else (b, a)
                found[i] = (seqs[w], seqs[lo], float(gold[w]), float(gold[lo]))
        redraws += len(still)
        pending = still
    if pending:
        raise ConfigError(f"comparisons: {len(pending)} prompts still tie after max_redraws = {max_redraws} redraws: "
                          f"the policy's samples are too uniform in gold reward.")
    rows = [found[i] for i in range(len(prompts))]
    chosen_ids, chosen_mask = _right_padded([r[0] for r in rows], pad)
    rejected_ids, rejected_mask = _right_padded([r[1] for r in rows], pad)
    return Comparisons(chosen_ids, chosen_mask, rejected_ids, rejected_mask,
                       np.array([r[2] for r in rows], dtype=np.float32), np.array([r[3] for r in rows], dtype=np.float32),
                       redraws=redraws, grammatical=grammatical / max(1, drawn))


def bradley_terry_loss(r_chosen: Tensor, r_rejected: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """mean −log σ(r_w − r_l) over comparisons [N]; metrics rm/accuracy (r_w > r_l) and rm/margin."""
    diff = r_chosen - r_rejected
    loss = -F.logsigmoid(diff).mean()
    return loss, {"rm/accuracy": (diff > 0).float().mean().detach(), "rm/margin": diff.mean().detach()}


def _scores(model, ids: Tensor, mask: Tensor) -> Tensor:
    width = int(mask.sum(1).max())
    return model(input_ids=ids[:, :width], attention_mask=mask[:, :width]).logits[:, 0].float()


@torch.no_grad()
def evaluate_reward_model(model, data: Comparisons, chunk: int = 1024) -> dict[str, float]:
    """rm/accuracy (fraction with r_w > r_l), rm/pearson (correlation of scores with gold over both sides),
    rm/spearman (rank correlation), rm/loss (Bradley–Terry) on `data`."""
    model.eval()
    rw = torch.cat([_scores(model, data.chosen_ids[i:i + chunk], data.chosen_mask[i:i + chunk])
                    for i in range(0, len(data.gold_chosen), chunk)])
    rl = torch.cat([_scores(model, data.rejected_ids[i:i + chunk], data.rejected_mask[i:i + chunk])
                    for i in range(0, len(data.gold_rejected), chunk)])
    loss, m = bradley_terry_loss(rw, rl)
    scores = torch.cat([rw, rl]).cpu().numpy().astype(np.float64)
    gold = np.concatenate([data.gold_chosen, data.gold_rejected]).astype(np.float64)
    return {"rm/accuracy": float(m["rm/accuracy"]), "rm/loss": float(loss), "rm/pearson": _corr(scores, gold),
            "rm/spearman": _corr(_ranks(scores), _ranks(gold))}


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean rank)."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=np.float64)
    _, inverse = np.unique(x, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks)
    counts = np.bincount(inverse)
    return (sums / counts)[inverse]


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _build_reward_model(cfg: RewardModelConfig, policy_dir: Path, out: Path, device: Device) -> dict:
    from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel

    dev = torch.device(device)
    language = cfg.sft.pretrain.language
    tokenizer = corpora.tokenizer(language)
    policy = GPT2LMHeadModel.from_pretrained(policy_dir).to(dev).eval()
    train_prompts = corpora.prompts(language, "train", cfg.pairs, stream_seed(cfg.seed, "rm-train-prompts"))
    test_prompts = corpora.prompts(language, "heldout", cfg.heldout_pairs, stream_seed(cfg.seed, "rm-heldout-prompts"))
    kwargs = dict(temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, max_redraws=cfg.max_redraws,
                  language=language)
    train = comparisons(policy, tokenizer, train_prompts, gen=generator(cfg.seed, "rm-train-samples", dev), **kwargs).to(dev)
    test = comparisons(policy, tokenizer, test_prompts, gen=generator(cfg.seed, "rm-heldout-samples", dev), **kwargs).to(dev)
    del policy
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(cfg.seed, "rm-init"))
        if cfg.init == "sft":
            with _quiet_transformers():  # its load report lists the new score head as missing, as intended
                model = GPT2ForSequenceClassification.from_pretrained(policy_dir, num_labels=1)
        else:
            config = gpt2_config(cfg.model, tokenizer)
            config.num_labels = 1
            model = GPT2ForSequenceClassification(config)
        model.config.pad_token_id = tokenizer.pad_token_id
        model.to(dev)

        def loss_fn(idx: Tensor) -> Tensor:
            rw = _scores(model, train.chosen_ids[idx], train.chosen_mask[idx])
            rl = _scores(model, train.rejected_ids[idx], train.rejected_mask[idx])
            return bradley_terry_loss(rw, rl)[0]

        losses = _train(model, loss_fn, cfg.pairs, cfg, generator(cfg.seed, "rm", dev))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    metrics = {"train/loss": _final_loss(losses), "train/loss_first": losses[0],
               "data/train_redraws": float(train.redraws), "data/heldout_redraws": float(test.redraws),
               "data/grammatical": train.grammatical, "data/heldout_pairs": float(len(test_prompts))}
    metrics.update({f"train/{k}": v for k, v in evaluate_reward_model(model, train).items()})
    metrics.update({f"heldout/{k}": v for k, v in evaluate_reward_model(model, test).items()})
    return metrics


# ------------------------------------------------------------------------------------------------ loading


def _dropout_kwargs(name_or_path: str, dropout: float | None) -> dict[str, float]:
    if dropout is None:
        return {}
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout = {dropout!r} is invalid: must lie in [0, 1).")
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(name_or_path)
    return {name: float(dropout) for name in DROPOUT_FIELDS if hasattr(config, name)}


def load_causal_lm(name_or_path: str | os.PathLike, *, dropout: float | None = None
                   ) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    """A causal LM and its tokenizer from a local directory (an artifact) or a hub id ("gpt2"), in eval mode.

    `dropout`, if not None, overrides every field of DROPOUT_FIELDS that the model's config has. A tokenizer
    without a pad token gets pad = eos."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name_or_path = str(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, **_dropout_kwargs(name_or_path, dropout))
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


def load_reward_model(path: str | os.PathLike) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    """A sequence-classification reward model (one logit, read at the last non-pad token) and its tokenizer, in
    eval mode. Score (prompt, response) batches with `reward_scores`."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = str(path)
    model = AutoModelForSequenceClassification.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer
