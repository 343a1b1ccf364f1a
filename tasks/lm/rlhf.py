"""Online RLHF of a small `transformers` causal LM: every method as one loss on a `[B, K]` batch of sequences.

One update (`[EM-SFT] §6`, `[EM-LLM] §4, §7`):
1. draw `prompts_per_update` training prompts and sample K = `samples_per_prompt` responses each at `temperature`
   from the current policy in eval mode (`tasks.lm.tokens.sample`, the rollout of `[EM-SFT] §9`);
2. score them with the task's reward: the gold reward of its corpus (`tasks.lm.corpora`: VADER's sentiment of the
   continuation for English, the grammar's programmatic reward), or the learned Bradley–Terry proxy
   (`tasks.lm.models.reward_model`); both are always logged. A task with annotator groups (`reward="groups"`, L6) learns
   its reward models from the groups' labels before the first update (`learn_group_rewards`, `tasks.lm.groups`) and
   optimises the pooled model, or (`group_reward="maxmin"`) each update the mixture component whose mean reward on the
   rollout is lowest (`worst_cluster`, rows `maxmin/…`);
3. teacher-forced passes of the bodies of the sampling policy (eval mode, no gradient) and of π_ref keep their last
   hidden states [N, T + 1, H] and a frozen copy of π_old's output head; per-token log-probs and closed-form
   per-token KLs come from them in chunks of the vocabulary-sized logits (`tasks.lm.tokens`), never stored at
   [N, T, V];
4. the method's loss on a `Batch` with sequence-level fields ([B, K]: summed log-probs, scores, labels, closed-form
   KL(π_ref‖π_θ) and KL(π_old‖π_θ) per context) and token-level fields ([B, K, T]); `epochs` passes over
   `minibatches` minibatches of prompts (each with its K samples), in train mode: with `dropout` > 0 every
   training forward pass draws its own dropout mask, while the old log-probs were computed without dropout. The
   closed-form KL terms read that training pass (`kl_pass="dropout"`) or a second pass of π_θ without dropout
   (`"clean"`); log-probs and ratios always read the training pass;
5. every `ref_refresh` updates (if set) π_ref becomes a copy of π_θ (`[PMPO] §5`: "the reference policy for all
   baselines is updated every N steps"), logged as `ref/refreshed`. The loss's KL and the reward's KL penalty then
   look at the latest reference, while every evaluation KL stays to the starting model (the frontier's axis).

What `score` holds depends on what the method is (decided from its declared `Needs`, never its name):
- a method with its own critic term (PPO, `needs.values`): advantages from the value head on the policy's last
  hidden states — per token with GAE (γ = 1, `gae_lambda`) on token rewards −β·k1_t plus the reward at the last
  token (Ziegler et al. 2019, TRL), or per sequence A = r − β·Σ_t k1_t − V(x) when `ratio_level = "sequence"`;
- `advantage = "value"` for a method without a critic term (V-MPO's A = r − V_φ(x) of `[EM-SFT] §6`, AWR): the same
  sequence-level advantage, the value head trained by the loop's ½(V − r)² with weight `vf_coef`;
- otherwise the reward itself; the method forms its own baseline (RLOO, GRPO, REINFORCE++, ReMax, DAR, GRO).
A method that regularises towards π_ref inside its loss (needs logp_ref or kl_ref: DPO, PMPO, DAR, RLOO, GRPO,
REINFORCE++) sees the raw reward; every other method sees the KL-shaped reward r − β·Σ_t (log π_old − log π_ref)
with β = `reward_kl`, the usual RLHF objective (`[EM-SFT] §6` "E-step / M-step for RL Fine-Tuning"). Labels: the top
half of each prompt's K samples by score are accepted (+1), the rest rejected (−1) (PMPO's 2 of 4, `[PMPO] §5`);
samples tied at the boundary get neither label (`label_ties`, `accept_reject`).
ReMax's baseline is the reward of each prompt's greedy response.

Logged every update (step = updates done): `reward/gold`, `reward/proxy` (mean over the rollout), `kl/ref_seq` (mean
over sequences of Σ_t KL(π_old(·|s_t) ‖ π_ref(·|s_t)), closed form at the sampled prefixes: an unbiased estimate
of the sequence-level KL), `length`, the method's metrics averaged over minibatches, `first/ratio_std` and
`first/clipfrac` (the first minibatch, at θ = θ_old: pure dropout noise for a ratio method), `update/early_stop`
(PPO's KL early stopping, `target_kl`), `labels/boundary_ties` (the fraction of prompts whose K/2-th and
(K/2 + 1)-th scores tie), `ref/refreshed`.

Two evaluations, both with the policy in eval mode (no dropout) and sampling at `temperature`:
- **curves** (cheap): every `eval_every` updates and at the start and end, one sample for each of `eval_prompts`
  held-out prompts: `eval/gold`, `eval/proxy`, `eval/kl_ref`, `eval/well_formed` (and, with `final_train`,
  `eval_train/gold` on as many training prompts); the generator is the run's own (`eval/<step>` of its seed);
- **the fixed score set** (low noise, what every L claim's score reads): at the start and the end (and every
  `final_every` updates if set), `final_samples` samples for each of the first `final_prompts` held-out prompts —
  the same prompts for every seed and method — drawn with one generator fixed by the task (`prompt_seed`), not by the
  run, so that every run, method and evaluation point sees the same sampling noise (common random numbers: the
  differences between runs are paired). Rows `final/gold`, `final/proxy`, `final/kl_ref`, `final/well_formed`
  (means over every sample); with `final_train`, `final_train/gold` and `final_train/kl_ref` on the training pool's
  first prompts (as many samples as the held-out set has prompts). The start is the same model for every run of a
  task, so its evaluation is computed once per process and reused (same numbers). Its cost, measured on one core of the
  2-core machine with the English model: 2.7 s per evaluation of 256 × 4 samples, against 0.3 s per update of
  16 × 4 samples (a quick run of 40 updates: ~16 s).
A non-finite loss, gradient or parameter, or a KL to the reference above `kl_limit`, stops the run as
`diverged` with the update and the reason (its rows stop there: a diverged run has no end-of-training evaluation).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn
from transformers.utils import logging as hf_logging

from algorithms import REGISTRY as ALGORITHMS
from algorithms.advantages import gae
from algorithms.base import Batch, Needs
from algorithms.common import top_k_mask
from algorithms.maxmin import worst_group_weights
from algorithms.config import ConfigError, check_choices, check_positive, check_range, field
from algorithms.reinforce_pp import last_token
from tasks.base import Device, Family, RunResult, RunSpec, register_task
from tasks.lm import corpora, groups
from tasks.lm.corpora import Corpus
from tasks.lm.english import EnglishConfig
from tasks.lm.models import (ModelConfig, PretrainConfig, RewardModelConfig, SFTStageConfig, load_causal_lm,
                             load_reward_model, reward_model, reward_scores, sft_model)
from tasks.lm.sft_check import LMSFTCheckConfig, sft_check
from tasks.lm.tokens import (encode_prompts, frozen_head, hidden_response, output_head, sample, token_kl_hidden,
                             token_logprobs)
from tasks.seeding import generator, stream_seed

hf_logging.set_verbosity_error()  # the suite builds its models from configs: no "newly initialized" notices or
hf_logging.disable_progress_bar()  # weight-loading progress bars in the CLI's output


@dataclass(frozen=True)
class LMTaskConfig:
    """An LM task: which policy to start from, which reward it optimises, and its prompt sets."""

    corpus: Literal["grammar", "english"] = field(
        "grammar", "the text: the synthetic grammar (fast; tests) or real English (Shakespeare's speeches, VADER gold)")
    gold: Literal["sentiment", "match"] = field(
        "sentiment", "English gold reward: the continuation's sentiment, or its sentiment times the sign of the "
                     "prompt's own (`match`: a prompt-dependent reward, prompts with a clear sentiment only)")
    policy: str = field("", "starting policy: '' builds the suite's SFT model (tasks.lm.models); else a local "
                            "directory or hub id of a causal LM (loaded with from_pretrained)")
    reward: Literal["gold", "proxy", "groups"] = field(
        "gold", "what the policy optimises: the gold reward, the learned Bradley–Terry proxy (both are logged), or the "
                "reward models learned from the annotator groups' labels (`groups`; the loop's `group_reward` says how)")
    groups: Literal["", "sentiment-brevity"] = field(
        "", "annotator groups with different utilities (tasks.lm.groups; '' none): 'sentiment-brevity', a majority "
            "preferring a positive continuation and a minority a short one; each group's utility is logged")
    minority: float = field(0.2, "share of the annotators in the minority group")
    annotators: int = field(20, "annotators labelling pairs of the SFT model's samples")
    annotator_pairs: int = field(300, "training pairs each annotator labels, among those it has a preference on")
    annotator_heldout_pairs: int = field(40, "held-out pairs each annotator labels (held-out prompts; reward models "
                                             "are scored on them)")
    pair_pool: int = field(4000, "pairs of SFT samples (training prompts) the annotators label from; a quarter as "
                                 "many held-out pairs")
    label_scale: float = field(10.0, "an annotator prefers y1 with probability σ(label_scale·(u(y1) − u(y2)))")
    train_prompts: int = field(2048, "size of the training prompt pool (small-data regime: a few dozen)")
    eval_prompts: int = field(64, "held-out prompts (and training prompts) per curve evaluation, one sample each")
    final_prompts: int = field(256, "held-out prompts of the fixed score set (the same for every seed and method)")
    final_samples: int = field(4, "samples per prompt of the fixed score set")
    final_train: bool = field(False, "also score the training pool's first n = min(train_prompts, final_prompts) prompts, "
                                     "ceil(final_prompts / n) samples each (the train/held-out gap), and log the cheap "
                                     "curve on as many training prompts")
    max_new_tokens: int = field(16, "cap on generated tokens (grammar: the longest sentence plus EOS is 15; English: "
                                    "about 8 words)")
    temperature: float = field(1.0, "sampling temperature of rollouts and evaluation")
    rm_pairs: int = field(0, "gold-labelled comparisons the proxy reward model is trained on (0: the "
                             "RewardModelConfig default)")
    stages: Literal["default", "tiny"] = field("default", "artifact stages: the defaults of tasks.lm.models, or "
                                                          "`TINY_STAGES` (seconds to build; smoke profile and tests)")
    prompt_seed: int = field(0, "seed of the prompt pools (the task instance; the same for every run seed)")

    def __post_init__(self):
        check_choices(self)
        check_positive(self, "train_prompts", "eval_prompts", "final_prompts", "final_samples", "max_new_tokens",
                       "temperature")
        check_positive(self, "rm_pairs", strict=False)
        if self.gold != "sentiment" and self.corpus != "english":
            raise ConfigError(f"LMTaskConfig.gold = {self.gold!r} is invalid with corpus = {self.corpus!r}: the "
                              "grammar has the sentiment reward only.")
        check_range(self, "minority", 0.0, 0.5, lo_open=True)
        check_positive(self, "annotators", "annotator_pairs", "annotator_heldout_pairs", "pair_pool", "label_scale")
        if self.groups and self.corpus != "english":
            raise ConfigError(f"LMTaskConfig.groups = {self.groups!r} is invalid with corpus = {self.corpus!r}: the "
                              "annotator groups label English continuations.")
        if self.reward == "groups" and not self.groups:
            raise ConfigError("LMTaskConfig.reward = 'groups' needs annotator groups: set `groups` (allowed: "
                              "'sentiment-brevity').")
        if self.gold != "sentiment" and self.reward == "proxy":
            raise ConfigError(f"LMTaskConfig.gold = {self.gold!r} is invalid with reward = 'proxy': the reward model "
                              "is trained on the sentiment reward's labels.")


@dataclass(frozen=True)
class LMRLHFConfig:
    """The online RLHF loop. Defaults are the suite's laptop-scale choices; the papers' LLM settings differ in
    scale (see each question's deviation table)."""

    updates: int = field(60, "RLHF updates (each: sample, score, learn)")
    prompts_per_update: int = field(16, "prompts per update (B)")
    samples_per_prompt: int = field(4, "K responses per prompt; DAR, PMPO: 4")
    epochs: int = field(1, "passes over each update's samples")
    minibatches: int = field(1, "minibatches of prompts per epoch (a prompt's K samples stay together)")
    lr: float = field(3e-4, "Adam learning rate of the policy (and value head)")
    dual_lr: float = field(1e-2, "Adam learning rate of the algorithm's duals (η, α)")
    max_grad_norm: float | None = field(1.0, "clip of the global gradient norm; None: no clip")
    reward_kl: float = field(0.05, "β of the KL penalty r − β·Σ_t k1_t for methods without a reference term; "
                                   "TRL PPO: 0.05")
    advantage: Literal["reward", "value"] = field(
        "reward", "score of a method without a critic term: the (shaped) reward, or r − V(x) from the value head")
    vf_coef: float = field(0.5, "weight of the loop's value loss (advantage='value')")
    gae_lambda: float = field(0.95, "GAE λ of token-level PPO (γ = 1); TRL: 0.95")
    dropout: float = field(0.0, "dropout p of the policy's training passes (residual, embedding, attention)")
    target_kl: float | None = field(None, "PPO early stopping: end the update's epochs once a minibatch's "
                                          "k3 KL(π_old‖π_θ) exceeds 1.5·target_kl (Spinning Up); None: never")
    eval_every: int = field(10, "updates between curve evaluations (also at the start and the end)")
    final_every: int = field(0, "updates between evaluations on the fixed score set; 0: at the start and the end only")
    kl_limit: float = field(50.0, "a mean sequence KL to the reference above this (nats) marks the run diverged")
    ref_refresh: int = field(0, "updates between copies of the policy into π_ref, the reference of the loss and of "
                                "the KL penalty ([PMPO] §5: every N steps, for every method); 0: π_ref stays the "
                                "starting model. Evaluation KLs are always to the starting model")
    kl_pass: Literal["dropout", "clean"] = field(
        "dropout", "which forward pass of π_θ the loss's closed-form KL terms (to π_old and to π_ref) read when "
                   "dropout > 0: the training pass with its dropout mask, or a second pass without dropout (log-probs "
                   "and ratios always come from the training pass)")
    label_ties: Literal["neither", "index"] = field(
        "neither", "accept/reject labels when scores tie across the top-half boundary: the tied samples get neither "
                   "label, or the lower sample index wins (the old rule)")
    group_reward: Literal["pooled", "maxmin"] = field(
        "pooled", "with task reward 'groups': one Bradley–Terry reward model on every annotator's labels (single-reward "
                  "RLHF), or EM over a mixture of `em_clusters` reward models and, each update, the reward of the "
                  "cluster whose utility under the current policy is lowest (MaxMin-RLHF, [EM-LLM] §8 Algorithms 1–2)")
    em_clusters: int = field(2, "mixture components of the EM (the paper's |U|)")
    em_assignment: Literal["hard", "soft"] = field("hard", "the EM's E-step: argmax (Algorithm 2 as the paper runs it) "
                                                           "or the posterior; the other one is run and logged too")
    em_iterations: int = field(20, "EM iterations (a hard EM stops early at a fixed point)")
    em_restarts: int = field(3, "EM restarts from random annotator splits; the highest marginal likelihood wins")
    device: Device = field("cpu", "where the loop keeps networks, rollout tensors and losses: 'cpu' or 'cuda' (the "
                                  "runner picks which GPU); the SFT and reward models are trained there too")

    def __post_init__(self):
        check_choices(self)
        check_positive(self, "updates", "prompts_per_update", "samples_per_prompt", "epochs", "minibatches", "lr",
                       "dual_lr", "max_grad_norm", "eval_every", "kl_limit", "target_kl")
        check_positive(self, "reward_kl", "vf_coef", "final_every", "ref_refresh", strict=False)
        check_positive(self, "em_clusters", "em_iterations", "em_restarts")
        check_range(self, "gae_lambda", 0.0, 1.0)
        check_range(self, "dropout", 0.0, 1.0, hi_open=True)
        if self.minibatches > self.prompts_per_update:
            raise ConfigError(f"LMRLHFConfig.minibatches = {self.minibatches} is invalid: must be ≤ prompts_per_update "
                              f"= {self.prompts_per_update}.")


def provides(cfg: LMRLHFConfig | LMSFTCheckConfig) -> Needs:
    if isinstance(cfg, LMSFTCheckConfig):
        return Needs()
    return Needs(min_samples=cfg.samples_per_prompt, labels=True, logp_old=True, logp_ref=True, kl_ref=True,
                 kl_old=True, values=True, baseline=True)


# ------------------------------------------------------------------------------------------------ artifacts


_TINY_MODEL = ModelConfig(n_layer=1, n_head=2, n_embd=32)
_TINY_SFT = SFTStageConfig(pretrain=PretrainConfig(model=_TINY_MODEL, documents=2000, steps=150, batch_size=32),
                           pairs=1000, steps=100, batch_size=32, eval_prompts=16)
TINY_STAGES = (_TINY_SFT, RewardModelConfig(sft=_TINY_SFT, model=_TINY_MODEL, pairs=60, steps=10, batch_size=32))
"""Stages that build in seconds: plumbing only (the smoke profile and the tests), never a learning result."""


_ENGLISH = EnglishConfig()
_ENGLISH_MODEL = ModelConfig(n_layer=2, n_head=4, n_embd=64, n_positions=48, dropout=0.1)
_ENGLISH_SFT = SFTStageConfig(pretrain=PretrainConfig(language=_ENGLISH, model=_ENGLISH_MODEL, documents=40_000,
                                                      steps=1000, batch_size=32, lr=3e-3),
                              pairs=15_000, steps=600, batch_size=64, lr=1e-3, eval_prompts=512)
ENGLISH_STAGES = (_ENGLISH_SFT, RewardModelConfig(sft=_ENGLISH_SFT, model=_ENGLISH_MODEL, pairs=300,
                                                  heldout_fraction=1.0, steps=300, max_new_tokens=16))
"""The real-English artifacts: a GPT-2 (2 layers, width 64, GPT-2's dropout 0.1 in every stage) pretrained on the
training plays' speeches, SFT'd on (opening, continuation) pairs, and its Bradley–Terry reward model: 300
VADER-labelled comparisons (few enough to be exploitable: L4's proxy, logged as `reward/proxy` by every run), measured on 300 held-out
comparisons."""
_TINY_ENGLISH_MODEL = ModelConfig(n_layer=1, n_head=2, n_embd=32, n_positions=48, dropout=0.1)
_TINY_ENGLISH_SFT = SFTStageConfig(pretrain=PretrainConfig(language=EnglishConfig(vocab_size=300),
                                                           model=_TINY_ENGLISH_MODEL, documents=2000, steps=100,
                                                           batch_size=32), pairs=1000, steps=50, batch_size=32,
                                   eval_prompts=16)
TINY_ENGLISH_STAGES = (_TINY_ENGLISH_SFT, RewardModelConfig(sft=_TINY_ENGLISH_SFT, model=_TINY_ENGLISH_MODEL, pairs=60,
                                                            steps=10, batch_size=32, max_new_tokens=16))
"""English stages that build in seconds (vocabulary 300): plumbing only, never a learning result."""


def stages(task: LMTaskConfig) -> tuple[SFTStageConfig, RewardModelConfig]:
    """The SFT stage the policy starts from and the proxy reward model's config."""
    english = task.corpus == "english"
    if task.stages == "tiny":
        sft, rm = TINY_ENGLISH_STAGES if english else TINY_STAGES
    else:
        sft, rm = ENGLISH_STAGES if english else (SFTStageConfig(), RewardModelConfig())
    if task.rm_pairs:
        rm = dataclasses.replace(rm, pairs=task.rm_pairs)
    return sft, rm


def language_of(task: LMTaskConfig) -> Corpus:
    return stages(task)[0].pretrain.language


def task_prompts(task: LMTaskConfig, split: str, n: int) -> list[str]:
    """The task's first `n` prompts of `split` (the same list for every run of the task)."""
    return corpora.prompts(language_of(task), split, n, seed=task.prompt_seed, gold=task.gold)


class Rewards:
    """Gold and proxy rewards of decoded responses, on the device of the responses.

    The proxy reward model is the suite's (`tasks.lm.models.reward_model`). When the policy's tokenizer is not the
    reward model's (a policy given by `task.policy`), the reward model reads the decoded text, encoded with its own
    tokenizer and cut to its context."""

    def __init__(self, task: LMTaskConfig, tokenizer, device: Device = "cpu"):
        self.tokenizer = tokenizer
        self.language, self.gold = language_of(task), task.gold
        self.rm, self.rm_tokenizer = load_reward_model(reward_model(stages(task)[1], device))
        self.rm.to(torch.device(device)).eval()
        self.same_tokens = self.rm_tokenizer.get_vocab() == tokenizer.get_vocab()
        self.population = task.groups
        self.learned: groups.LearnedRewards | None = None  # set by the loop when the task optimises the groups' rewards

    def texts(self, response_ids: Tensor, response_mask: Tensor) -> list[str]:
        return [self.tokenizer.decode(r[m > 0].tolist()) for r, m in zip(response_ids.cpu(), response_mask.cpu())]

    def _rm_inputs(self, prompt_texts: list[str], texts: list[str], device) -> tuple[Tensor, ...]:
        """The reward model's own token ids of (prompt, decoded response), cut to its context."""
        tok, room = self.rm_tokenizer, self.rm.config.n_positions
        p_ids, p_mask = encode_prompts(tok, prompt_texts)
        rows = [tok(t, add_special_tokens=False)["input_ids"][: max(1, room - p_ids.shape[1])] for t in texts]
        width = max(len(r) for r in rows)
        r_ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        r_mask = torch.zeros(len(rows), width)
        for i, r in enumerate(rows):
            r_ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
            r_mask[i, :len(r)] = 1.0
        return tuple(x.to(device) for x in (p_ids, p_mask, r_ids, r_mask))

    def utilities(self, texts: list[str]) -> dict[str, float]:
        """Each annotator group's mean gold utility of `texts` (`utility_<group>`), {} without groups."""
        if not self.population:
            return {}
        u = groups.utilities(self.population, texts).mean(0)
        return {f"utility_{name}": float(v) for name, v in zip(groups.GROUPS[self.population], u)}

    @torch.no_grad()
    def scores(self, response_ids: Tensor, response_mask: Tensor) -> Tensor:
        """[N, M] the learned group reward models' standardised rewards (`tasks.lm.groups.LearnedRewards`)."""
        return self.learned(groups.features(response_ids, response_mask, len(self.tokenizer)))

    @torch.no_grad()
    def __call__(self, prompt_texts: list[str], prompt_ids: Tensor, prompt_mask: Tensor, response_ids: Tensor,
                 response_mask: Tensor) -> tuple[Tensor, Tensor]:
        """(gold [N], proxy [N]) of each response to its prompt."""
        texts = self.texts(response_ids, response_mask)
        gold = torch.from_numpy(corpora.gold_rewards(self.language, prompt_texts, texts, self.gold))
        gold = gold.float().to(response_ids.device)
        if self.same_tokens:
            inputs = (prompt_ids, prompt_mask, response_ids, response_mask)
        else:
            inputs = self._rm_inputs(prompt_texts, texts, response_ids.device)
        proxy = reward_scores(self.rm, *inputs, self.rm_tokenizer.pad_token_id)
        return gold, proxy


# ------------------------------------------------------------------------------------------------ the loop


def accept_reject(score: Tensor, ties: str = "neither") -> tuple[Tensor, Tensor]:
    """PMPO's labels of K samples per prompt ([B, K] scores): the top half accepted (+1), the rest rejected (−1).

    When the K/2-th and (K/2 + 1)-th scores tie, the top half is not defined by the scores: with `ties="neither"`
    every sample scoring that boundary value gets label 0 (it is neither accepted nor rejected; a prompt whose K
    scores all tie teaches nothing), with `"index"` the lower sample index is accepted. Returns (labels [B·K],
    boundary tied [B] bool)."""
    B, K = score.shape
    label = 2.0 * top_k_mask(score, torch.ones_like(score), k=K // 2) - 1.0
    if K < 2:
        return label.reshape(-1), torch.zeros(B, dtype=torch.bool, device=score.device)
    ordered = score.sort(-1, descending=True).values
    boundary = ordered[:, K // 2 - 1]
    tied = boundary == ordered[:, K // 2]
    if ties == "neither":
        label = torch.where(tied[:, None] & (score == boundary[:, None]), torch.zeros_like(label), label)
    return label.reshape(-1), tied


@dataclass
class Rollout:
    """One update's samples, flattened to N = B·K sequences (prompt-major)."""

    prompt_ids: Tensor        # [N, P]
    prompt_mask: Tensor       # [N, P]
    response_ids: Tensor      # [N, T]
    mask: Tensor              # [N, T]
    logp_old: Tensor          # [N, T] per-token log π_old
    hidden_old: Tensor        # [N, T + 1, H] π_old's last hidden states (eval mode), read by head_old
    head_old: nn.Module       # π_old's output head, frozen at the rollout
    logp_ref: Tensor          # [N, T]
    hidden_ref: Tensor        # [N, T + 1, H] π_ref's last hidden states, read by the learner's ref head
    value_old: Tensor         # [N, T + 1] value head on the sampling policy's states
    gold: Tensor              # [N]
    proxy: Tensor             # [N]
    learned: Tensor | None = None  # [N, M] the annotator groups' learned rewards (task reward 'groups')


class Learner:
    """The policy, its value head, the frozen reference and the method; everything one run trains."""

    def __init__(self, spec: RunSpec):
        self.cfg: LMRLHFConfig = spec.train_config
        self.task: LMTaskConfig = spec.task_config
        self.dev = torch.device(self.cfg.device)
        self.method = ALGORITHMS[spec.algo](spec.algo_config).to(self.dev)
        self.needs = type(self.method).needs_for(spec.algo_config)
        missing = self.needs.missing(provides(self.cfg))
        if missing:
            raise ConfigError(f"algorithm {spec.algo!r} needs {', '.join(missing)}, which the LM RLHF loop does not provide.")
        path = self.task.policy or str(sft_model(stages(self.task)[0], self.cfg.device))
        self.path = path
        with torch.random.fork_rng(devices=[]):  # loaded and initialised on the CPU, then moved
            torch.manual_seed(stream_seed(spec.seed, "run/init"))
            self.policy, self.tokenizer = load_causal_lm(path, dropout=self.cfg.dropout)
            self.ref, _ = load_causal_lm(path, dropout=0.0)
            self.value_head = nn.Linear(self.policy.config.hidden_size, 1)
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)
        for module in (self.policy, self.ref, self.value_head):
            module.to(self.dev)
        self.ref.requires_grad_(False)
        self.start = self.ref  # the starting model: evaluation KLs are to it, also after a reference refresh
        self.policy.train()
        params = [*self.policy.parameters(), *self.value_head.parameters()]
        self.params = params
        self.opt = torch.optim.Adam(params, lr=self.cfg.lr)
        duals = list(self.method.parameters())
        self.dual_opt = torch.optim.Adam(duals, lr=self.cfg.dual_lr) if duals else None
        self.critic = self.needs.values or self.cfg.advantage == "value"
        self.shaped = not (self.needs.logp_ref or self.needs.kl_ref)
        self.ratio_level = getattr(spec.algo_config, "ratio_level", "sequence")
        self.eos, self.pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        self.cluster = 0  # which learned group reward `reward_of` reads (MaxMin-RLHF: chosen every update)

    # ------------------------------------------------------------------ rollout
    @torch.no_grad()
    def rollout(self, prompt_texts: list[str], rewards: Rewards, gen: torch.Generator, *, k: int,
                greedy: bool = False) -> Rollout:
        p_ids, p_mask = (x.to(self.dev).repeat_interleave(k, 0) for x in encode_prompts(self.tokenizer, prompt_texts))
        r_ids, r_mask = sample(self.policy, p_ids, p_mask, max_new_tokens=self.task.max_new_tokens,
                               temperature=self.task.temperature, generator=gen, eos_id=self.eos, pad_id=self.pad,
                               greedy=greedy)
        self.policy.eval()
        h_old = hidden_response(self.policy, p_ids, p_mask, r_ids, r_mask)
        self.policy.train()
        head_old = frozen_head(self.policy)
        h_ref = hidden_response(self.ref, p_ids, p_mask, r_ids, r_mask)
        gold, proxy = rewards([t for t in prompt_texts for _ in range(k)], p_ids, p_mask, r_ids, r_mask)
        learned = rewards.scores(r_ids, r_mask) if rewards.learned is not None else None
        return Rollout(p_ids, p_mask, r_ids, r_mask, token_logprobs(h_old, head_old, r_ids, r_mask), h_old, head_old,
                       token_logprobs(h_ref, output_head(self.ref), r_ids, r_mask), h_ref,
                       self.value_head(h_old)[..., 0], gold, proxy, learned)

    def kl_to_ref(self, ro: Rollout) -> Tensor:
        """Σ_t KL(π_old(·|s_t) ‖ π_ref(·|s_t)) per sequence [N], closed form at the sampled prefixes."""
        return token_kl_hidden(ro.hidden_old, ro.head_old, ro.hidden_ref, output_head(self.ref), ro.mask).sum(-1)

    @torch.no_grad()
    def kl_to_start(self, ro: Rollout) -> Tensor:
        """Σ_t KL(π_old ‖ π_start) per sequence [N]: to the starting model, whatever π_ref is now."""
        if self.start is self.ref:
            return self.kl_to_ref(ro)
        h = hidden_response(self.start, ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.mask)
        return token_kl_hidden(ro.hidden_old, ro.head_old, h, output_head(self.start), ro.mask).sum(-1)

    @torch.no_grad()
    def refresh_reference(self) -> None:
        """π_ref ← π_θ ([PMPO] §5); the starting model stays as it was, for evaluation."""
        if self.ref is self.start:
            self.ref = copy.deepcopy(self.start)
        self.ref.load_state_dict(self.policy.state_dict())
        self.ref.eval()

    def reward_of(self, ro: Rollout) -> Tensor:
        if self.task.reward == "groups":
            return ro.learned[:, self.cluster]  # the pooled model (M = 1), or this update's worst-off cluster
        return ro.gold if self.task.reward == "gold" else ro.proxy

    def shaped_reward(self, ro: Rollout) -> Tensor:
        """r − β·Σ_t (log π_old − log π_ref) for methods without a reference term; r otherwise. [N]"""
        r = self.reward_of(ro)
        if not self.shaped or self.cfg.reward_kl == 0:
            return r
        return r - self.cfg.reward_kl * (ro.logp_old - ro.logp_ref).sum(-1)

    def scores(self, ro: Rollout) -> tuple[Tensor, Tensor | None]:
        """(score, value_target): what the method's `score` holds, and the critic's regression target."""
        r = self.shaped_reward(ro)
        if not self.critic:
            return r, None
        if self.needs.values and self.ratio_level == "token":
            k1 = torch.where(ro.mask > 0, ro.logp_old - ro.logp_ref, torch.zeros_like(ro.logp_old))
            last = last_token(ro.mask)
            token_r = -self.cfg.reward_kl * k1 + last * self.reward_of(ro)[:, None]
            value, next_value = ro.value_old[:, :-1], ro.value_old[:, 1:]
            adv, target = gae(token_r, value, next_value, last, torch.zeros_like(token_r), gamma=1.0,
                              lam=self.cfg.gae_lambda)
            return adv, target
        return r - ro.value_old[:, 0], r

    # ------------------------------------------------------------------ learning
    def batch(self, ro: Rollout, idx: Tensor, score: Tensor, target: Tensor | None, label: Tensor,
              baseline: Tensor | None, B: int, K: int) -> tuple[Batch, Tensor | None]:
        """The method's `Batch` for the prompts `idx` (rows idx·K .. idx·K + K − 1), with a gradient pass."""
        rows = (idx[:, None] * K + torch.arange(K, device=idx.device)).reshape(-1)
        b = len(idx)
        inputs = (ro.prompt_ids[rows], ro.prompt_mask[rows], ro.response_ids[rows], ro.mask[rows])
        states = hidden_response(self.policy, *inputs)  # the training pass (train mode: dropout if p > 0)
        head, mask = output_head(self.policy), ro.mask[rows]
        tok = token_logprobs(states, head, ro.response_ids[rows], mask)
        kl_states = states
        if self.cfg.kl_pass == "clean" and self.cfg.dropout > 0:
            self.policy.eval()
            kl_states = hidden_response(self.policy, *inputs)  # the same θ without dropout, with gradient
            self.policy.train()
        shape = lambda x: x.reshape(b, K, *x.shape[1:])  # noqa: E731  [b·K, ...] -> [b, K, ...]
        kl_ref = token_kl_hidden(ro.hidden_ref[rows], output_head(self.ref), kl_states, head, mask).sum(-1)
        kl_old = token_kl_hidden(ro.hidden_old[rows], ro.head_old, kl_states, head, mask).sum(-1)
        seq_mask = torch.ones(b, K, device=idx.device)
        batch = Batch(logp=shape(tok.sum(-1)), score=shape(score[rows]), mask=seq_mask,
                      logp_old=shape(ro.logp_old[rows].sum(-1)), logp_ref=shape(ro.logp_ref[rows].sum(-1)),
                      label=shape(label[rows]), kl_ref=shape(kl_ref).mean(1), kl_old=shape(kl_old).mean(1),
                      baseline=None if baseline is None else baseline[idx],
                      token_logp=shape(tok), token_logp_old=shape(ro.logp_old[rows]),
                      token_logp_ref=shape(ro.logp_ref[rows]), token_mask=shape(mask))
        value = None
        if self.critic:
            v = self.value_head(states)[..., 0]  # [b·K, T + 1]
            if self.needs.values and self.ratio_level == "token":
                batch.value, batch.value_old = shape(v[:, :-1]), shape(ro.value_old[rows, :-1])
            else:
                batch.value, batch.value_old = shape(v[:, 0]), shape(ro.value_old[rows, 0])
            batch.value_target = shape(target[rows])
            value = batch.value
        return batch, value

    def update(self, ro: Rollout, gen: torch.Generator, B: int, K: int, baseline: Tensor | None) -> tuple[dict[str, float], str | None]:
        """`epochs` passes of `minibatches` minibatches; returns the averaged metrics, or the divergence reason."""
        cfg = self.cfg
        score, target = self.scores(ro)
        ranked = self.shaped_reward(ro).reshape(B, K)
        label, tied = accept_reject(ranked, cfg.label_ties)
        boundary_ties = float(tied.float().mean())
        logged: list[dict[str, Tensor]] = []
        early_stop = 0.0
        for epoch in range(cfg.epochs):
            for idx in torch.randperm(B, generator=gen, device=gen.device).tensor_split(cfg.minibatches):
                batch, value = self.batch(ro, idx, score, target, label, baseline, B, K)
                loss, metrics = self.method(batch)
                if self.critic and not self.needs.values:
                    v_loss = 0.5 * (value - batch.value_target).pow(2).mean()
                    loss = loss + cfg.vf_coef * v_loss
                    metrics = {**metrics, "value/loss": v_loss.detach()}
                if not torch.isfinite(loss):
                    return {}, "non-finite loss"
                self.opt.zero_grad(set_to_none=True)
                if self.dual_opt:
                    self.dual_opt.zero_grad(set_to_none=True)
                loss.backward()
                norm = nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm or math.inf)
                if not torch.isfinite(norm):
                    return {}, "non-finite gradient"
                self.opt.step()
                if self.dual_opt:
                    self.dual_opt.step()
                metrics = {**metrics, "update/grad_norm": norm}
                if not logged:  # the first minibatch sees θ = θ_old: its ratio spread is the dropout noise alone
                    for key, first in (("ratio/std", "first/ratio_std"), ("ratio/clipfrac", "first/clipfrac")):
                        if key in metrics:
                            metrics[first] = metrics[key]
                logged.append({k: v.detach().float().reshape(()) for k, v in metrics.items()})
                if cfg.target_kl is not None and "kl/old" in metrics and float(metrics["kl/old"]) > 1.5 * cfg.target_kl:
                    early_stop = 1.0
                    break
            if early_stop:
                break
        keys = sorted({k for m in logged for k in m})
        out = {k: float(torch.stack([m[k] for m in logged if k in m]).mean()) for k in keys}
        out["update/early_stop"] = early_stop
        out["labels/boundary_ties"] = boundary_ties
        out["update/minibatches"] = float(len(logged))
        if not all(torch.isfinite(p).all() for p in self.params):
            return out, "non-finite parameters"
        return out, None

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, prompt_texts: list[str], rewards: Rewards, gen: torch.Generator, k: int = 1,
                 chunk: int = 256) -> dict[str, float]:
        """Means over `k` samples of each prompt (eval mode): gold, proxy, KL to the starting model, well-formed share,
        and the samples' diversity (`corpora.diversity`: distinct-1/2, and per prompt with k ≥ 2). Prompts go through
        in chunks of `chunk` (memory), all drawing from the one generator `gen`."""
        gold, proxy, kl, texts = [], [], [], []
        for i in range(0, len(prompt_texts), chunk):
            ro = self.rollout(prompt_texts[i:i + chunk], rewards, gen, k=k)
            gold.append(ro.gold)
            proxy.append(ro.proxy)
            kl.append(self.kl_to_start(ro))
            texts += rewards.texts(ro.response_ids, ro.mask)
        well_formed = [corpora.well_formed(rewards.language, t) for t in texts]
        return {"gold": float(torch.cat(gold).mean()), "proxy": float(torch.cat(proxy).mean()),
                "kl_ref": float(torch.cat(kl).mean()), "well_formed": float(np.mean(well_formed)),
                **corpora.diversity(rewards.language, texts, k), **rewards.utilities(texts)}


def train(specs: list[RunSpec]) -> list[RunResult]:
    """Train runs that differ only in seed, one after another (the L8 check when the loop config is LMSFTCheckConfig)."""
    return [sft_check(s, stages(s.task_config)[0].pretrain) if isinstance(s.train_config, LMSFTCheckConfig) else train_one(s)
            for s in specs]


FINAL_STREAM = "final-eval"
"""The generator stream of the fixed score set, seeded by the task's `prompt_seed` (never by the run's seed)."""

_START_SCORES: dict[tuple, list[tuple[str, float]]] = {}
"""The fixed score set's evaluation of each task's starting policy on each device type, computed once per process
(same numbers)."""


def score_sets(task: LMTaskConfig) -> tuple[list[str], list[str], int]:
    """The fixed score set: (held-out prompts, training prompts scored beside them or [], samples per training prompt)."""
    heldout = task_prompts(task, "heldout", task.final_prompts)
    if not task.final_train:
        return heldout, [], 0
    n = min(task.train_prompts, task.final_prompts)
    train = task_prompts(task, "train", task.train_prompts)[:n]
    return heldout, train, math.ceil(task.final_prompts / n)


def final_scores(learner: Learner, rewards: Rewards, task: LMTaskConfig) -> list[tuple[str, float]]:
    """(metric, value) rows of the fixed score set for the learner's current policy."""
    heldout, train, k_train = score_sets(task)
    gen = lambda stream: generator(task.prompt_seed, stream, learner.dev)  # noqa: E731
    out = [(f"final/{name}", v) for name, v in
           learner.evaluate(heldout, rewards, gen(FINAL_STREAM), k=task.final_samples).items()]
    if train:
        m = learner.evaluate(train, rewards, gen(FINAL_STREAM + "/train"), k=k_train)
        out += [("final_train/gold", m["gold"]), ("final_train/kl_ref", m["kl_ref"])]
    return out


_PREFERENCES: dict[tuple, groups.Preferences] = {}
"""The annotator groups' labelled pairs of each task's starting policy, drawn once per process (they depend on the task,
never on the run's seed)."""


def learn_group_rewards(learner: Learner, rewards: Rewards, task: LMTaskConfig, cfg: LMRLHFConfig,
                        seed: int) -> list[tuple[str, float]]:
    """Reward learning of `[EM-LLM] §8` from the annotator groups' labels (`tasks.lm.groups`): the pooled reward model,
    or the EM mixture (both E-steps are run and logged; `em_assignment`'s heads become the rewards). Sets
    `rewards.learned` and returns the step-0 rows (`groups/…`, `mixture/<assignment>/…`)."""
    key = (learner.path, repr(task), cfg.device)
    if key not in _PREFERENCES:
        _PREFERENCES[key] = groups.preferences(
            learner.start, learner.tokenizer, task_prompts(task, "train", task.train_prompts),
            task_prompts(task, "heldout", task.final_prompts), population=task.groups, minority=task.minority,
            annotators=task.annotators, pairs=task.annotator_pairs, heldout_pairs=task.annotator_heldout_pairs,
            pool=task.pair_pool, label_scale=task.label_scale, max_new_tokens=task.max_new_tokens, temperature=task.temperature,
            seed=task.prompt_seed, device=learner.dev)
    prefs = _PREFERENCES[key]
    pooled = groups.pooled_reward(prefs)
    rows = [(f"groups/{k}", v) for k, v in groups.pooled_report(prefs, pooled).items()]
    if cfg.group_reward == "pooled":
        rewards.learned = groups.learned_rewards(pooled, prefs)
        return rows
    for assignment in ("hard", "soft"):
        mix = groups.mixture_em(prefs, clusters=cfg.em_clusters, assignment=assignment, iterations=cfg.em_iterations,
                                restarts=cfg.em_restarts, seed=seed)
        rows += [(f"mixture/{assignment}/{k}", v) for k, v in groups.mixture_report(prefs, mix).items()]
        if assignment == cfg.em_assignment:
            rewards.learned = groups.learned_rewards(mix.W, prefs)
            matched = groups.match_components(mix.resp, prefs.group)
            rows += [(f"mixture/cluster_of_g{g}", float(m)) for g, m in enumerate(matched)]
    return rows


def worst_cluster(learned: Tensor) -> tuple[int, list[tuple[str, float]]]:
    """MaxMin-RLHF's selection (`[EM-LLM] §8` Algorithm 1 (a)–(b)): each cluster's utility under the current policy, the
    mean of its standardised reward over the rollout [N, M], and the argmin (`algorithms.maxmin.worst_group_weights`)."""
    utility = learned.mean(0)
    chosen = int(worst_group_weights(utility, selection="hard").argmax())
    return chosen, [*((f"maxmin/utility_c{m}", float(u)) for m, u in enumerate(utility)), ("maxmin/cluster", float(chosen))]


def train_one(spec: RunSpec) -> RunResult:
    """One run. The dropout masks of its training passes come from the global torch RNG, seeded here from the run's
    seed (stream `run/dropout`) inside `fork_rng`, so a run's numbers never depend on what its process ran before."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(spec.seed, "run/dropout"))
        return _train_one(spec)


def _train_one(spec: RunSpec) -> RunResult:
    cfg: LMRLHFConfig = spec.train_config
    task: LMTaskConfig = spec.task_config
    learner = Learner(spec)
    rewards = Rewards(task, learner.tokenizer, cfg.device)
    pool = task_prompts(task, "train", task.train_prompts)
    heldout = task_prompts(task, "heldout", task.eval_prompts)
    train_eval = pool[: task.eval_prompts]
    gen = generator(spec.seed, "run", learner.dev)
    B, K = cfg.prompts_per_update, cfg.samples_per_prompt
    rows: list[tuple[int, str, float]] = []

    def evaluate(step: int) -> None:
        eval_gen = generator(spec.seed, f"eval/{step}", learner.dev)
        for name, value in learner.evaluate(heldout, rewards, eval_gen).items():
            rows.append((step, f"eval/{name}", value))
        if task.final_train:
            rows.append((step, "eval_train/gold", learner.evaluate(train_eval, rewards, eval_gen)["gold"]))

    def score(step: int) -> None:
        if step == 0:  # the starting policy is the same for every run of the task: evaluate it once per process
            key = (learner.path, repr(task), cfg.device)
            if key not in _START_SCORES:
                _START_SCORES[key] = final_scores(learner, rewards, task)
            values = _START_SCORES[key]
        else:
            values = final_scores(learner, rewards, task)
        rows.extend((step, name, v) for name, v in values)

    if task.reward == "groups":
        rows.extend((0, name, v) for name, v in learn_group_rewards(learner, rewards, task, cfg, spec.seed))
    evaluate(0)
    score(0)
    for update in range(1, cfg.updates + 1):
        chosen = torch.randint(len(pool), (B,), generator=gen, device=gen.device).tolist()
        prompt_texts = [pool[i] for i in chosen]
        ro = learner.rollout(prompt_texts, rewards, gen, k=K)
        if ro.learned is not None:
            if cfg.group_reward == "maxmin":
                learner.cluster, selected = worst_cluster(ro.learned)
                rows.extend((update, name, v) for name, v in selected)
            rows.append((update, "reward/learned", float(learner.reward_of(ro).mean())))
        baseline = None
        if learner.needs.baseline:
            greedy = learner.rollout(prompt_texts, rewards, gen, k=1, greedy=True)
            baseline = learner.shaped_reward(greedy)
        kl_seq = learner.kl_to_ref(ro)
        rows.extend([(update, "reward/gold", float(ro.gold.mean())), (update, "reward/proxy", float(ro.proxy.mean())),
                     (update, "kl/ref_seq", float(kl_seq.mean())), (update, "length", float(ro.mask.sum(-1).mean()))])
        if not math.isfinite(float(kl_seq.mean())) or float(kl_seq.mean()) > cfg.kl_limit:
            return RunResult("diverged", rows, diverged={"step": update, "reason": f"KL(π‖π_ref) = {float(kl_seq.mean()):.3g} "
                                                                                  f"> {cfg.kl_limit:g}"})
        metrics, reason = learner.update(ro, gen, B, K, baseline)
        rows.extend((update, k, v) for k, v in metrics.items())
        if reason:
            return RunResult("diverged", rows, diverged={"step": update, "reason": reason})
        if update % cfg.eval_every == 0 or update == cfg.updates:
            evaluate(update)
        if update == cfg.updates or (cfg.final_every and update % cfg.final_every == 0):
            score(update)
        if cfg.ref_refresh and update % cfg.ref_refresh == 0 and update < cfg.updates:
            learner.refresh_reference()
            rows.append((update, "ref/refreshed", 1.0))
    return RunResult("ok", rows)


def _register() -> None:
    family = Family(name="lm", train_config=LMRLHFConfig, provides=provides, train=train,
                    description="online RLHF of a small transformers GPT-2 on real English or the synthetic grammar "
                                "(gold and proxy rewards)")
    register_task("lm-english", family, LMTaskConfig(corpus="english"),
                  "LM family, the L claims' task: continue the opening words of a Shakespeare speech; gold reward = "
                  "VADER's sentiment of the continuation")
    register_task("lm-english-small", family, LMTaskConfig(corpus="english", gold="match", train_prompts=32,
                                                           final_train=True),
                  "LM family, small-data regime: 32 training prompts, a prompt-dependent reward (continue in the "
                  "prompt's mood), scored on held-out prompts and on its training prompts")
    register_task("lm-english-proxy", family, LMTaskConfig(corpus="english", reward="proxy"),
                  "LM family optimising its Bradley–Terry proxy reward model (300 VADER-labelled pairs)")
    register_task("lm-english-groups", family, LMTaskConfig(corpus="english", groups="sentiment-brevity", reward="groups"),
                  "LM family with two annotator groups (80% prefer a positive continuation, 20% a short one): RLHF on "
                  "reward models learned from their pooled labels (L6)")
    for share in (0.1, 0.3):
        register_task(f"lm-english-groups-{round(share * 100)}", family,
                      LMTaskConfig(corpus="english", groups="sentiment-brevity", reward="groups", minority=share),
                      f"as lm-english-groups with a minority of {share:.0%} of the annotators (L6's knob)")
    register_task("lm-grammar", family, LMTaskConfig(), "LM family, the fast task: continue a sentence of the suite's "
                                                         "grammar; gold reward = sentiment and topic of a grammatical reply")
    register_task("lm-grammar-small", family, LMTaskConfig(train_prompts=32, final_train=True),
                  "LM family, small-data regime on the grammar: 32 training prompts, scored on held-out prompts and on "
                  "its training prompts")
    register_task("lm-grammar-proxy", family, LMTaskConfig(reward="proxy", rm_pairs=300),
                  "LM family on the grammar optimising a Bradley–Terry proxy reward model trained on 300 gold-labelled "
                  "pairs")


_register()
