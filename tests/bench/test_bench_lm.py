"""`make bench`: one whole RLHF update of the L questions' English task, and where its time goes, against plain
forward+backward of the same model on the same tokens.

On the quick scale (16 prompts × 4 samples of the suite's English GPT-2, built or reused from the artifact cache), in
interleaved rounds:
  plain      — one teacher-forced forward + backward of `[prompt, response]` with the model's own causal-LM loss on the
               response tokens (`labels=`) and an Adam step: the physical limit of a learner on these tokens;
  learn      — `Learner.update` with one epoch of one minibatch on the same rollout (per-token log-probs and closed-form
               KLs in chunks, the method's loss, backward, clipping, Adam), for V-MPO and token-level PPO;
  whole      — what a user waits for per update: `Learner.rollout` (generation with the KV cache, the π_old and π_ref
               passes, VADER's gold reward and the proxy reward model) then `Learner.update` at the questions' loop
               (2 epochs × 2 minibatches), for V-MPO.
Throughputs are tokens per second of the real (unpadded) prompt + response tokens, the best of the rounds (the machine is
noisy). Target: the learner step ≥ 0.6× the plain pass (chunked log-probs may not cost more than that).
"""

import dataclasses
import time

import pytest
import torch

from algorithms.ppo import PPOConfig
from suite.questions.lm import LM, PPO_LOOP, VALUE_LOOP, VMPO
from tasks.base import RunSpec, get_task
from tasks.lm.rlhf import Learner, Rewards, task_prompts
from tasks.seeding import generator

pytestmark = [pytest.mark.bench, pytest.mark.usefixtures("one_torch_thread")]
B, K, ROUNDS, REPEATS = 16, 4, 3, 3
TARGET = 0.6
METHODS = {"vmpo": ("vmpo", VMPO, VALUE_LOOP), "ppo": ("ppo", PPOConfig(), PPO_LOOP)}
TASK = get_task(LM).config


def _setup(name: str, epochs: int = 1, minibatches: int = 1):
    algo, cfg, loop = METHODS[name]
    loop = dataclasses.replace(loop, epochs=epochs, minibatches=minibatches, prompts_per_update=B, samples_per_prompt=K)
    learner = Learner(RunSpec(LM, TASK, algo, cfg, loop, 0))
    rewards = Rewards(TASK, learner.tokenizer)
    texts = task_prompts(TASK, "train", B)
    return learner, rewards, texts, learner.rollout(texts, rewards, generator(0, "bench"), k=K)


def _tokens(ro) -> int:
    return int(ro.prompt_mask.sum() + ro.mask.sum())


def _plain_seconds(learner, ro) -> float:
    model, opt = learner.policy, torch.optim.Adam(learner.policy.parameters(), lr=1e-6)
    ids = torch.cat([ro.prompt_ids, ro.response_ids], 1)
    mask = torch.cat([ro.prompt_mask, ro.mask], 1).long()
    labels = torch.where(torch.cat([torch.zeros_like(ro.prompt_mask), ro.mask], 1) > 0, ids, torch.full_like(ids, -100))
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    t0 = time.perf_counter()
    for _ in range(REPEATS):
        loss = model(input_ids=ids, attention_mask=mask, position_ids=positions, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / REPEATS


def _update_seconds(learner, ro) -> float:
    gen = generator(0, "bench/update")
    t0 = time.perf_counter()
    for _ in range(REPEATS):
        _, reason = learner.update(ro, gen, B, K, None)
        assert reason is None
    return (time.perf_counter() - t0) / REPEATS


def _whole_seconds(learner, rewards, texts) -> tuple[float, float]:
    """(rollout seconds, update seconds) of one whole update, best of REPEATS."""
    gen = generator(0, "bench/whole")
    best = (float("inf"), float("inf"))
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        ro = learner.rollout(texts, rewards, gen, k=K)
        t1 = time.perf_counter()
        _, reason = learner.update(ro, gen, B, K, None)
        assert reason is None
        t2 = time.perf_counter()
        best = min(best, (t1 - t0, t2 - t1), key=sum)
    return best


def test_bench_rlhf_update_vs_plain_forward_backward(benchmark):
    setups = {name: _setup(name) for name in METHODS}
    whole = _setup("vmpo", epochs=2, minibatches=2)
    ro = setups["vmpo"][3]
    tokens = _tokens(ro)
    plain, learn, rounds = [], {n: [] for n in METHODS}, []
    for _ in range(ROUNDS):
        plain.append(tokens / _plain_seconds(setups["vmpo"][0], ro))
        for name, (learner, _, _, r) in setups.items():
            learn[name].append(_tokens(r) / _update_seconds(learner, r))
        rounds.append(_whole_seconds(*whole[:3]))
    best_plain = max(plain)
    ratios = {n: max(u) / best_plain for n, u in learn.items()}
    roll, upd = min(rounds, key=sum)
    plain_s = tokens / best_plain
    benchmark.extra_info.update(tokens=tokens, plain_tokens_per_s=best_plain, whole_update_s=roll + upd,
                                rollout_s=roll, learning_s=upd, whole_over_plain=(roll + upd) / plain_s,
                                **{f"{n}_learn_ratio": r for n, r in ratios.items()})
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    print(f"\nEnglish LM rollout of {B}×{K} sequences ({tokens} tokens): plain forward+backward {best_plain:.0f} tokens/s "
          f"({plain_s * 1e3:.0f} ms); learner step (1 epoch × 1 minibatch) "
          + "; ".join(f"{n} {max(u):.0f} tokens/s = {ratios[n]:.2f}x plain" for n, u in learn.items())
          + f". Whole V-MPO update {1e3 * (roll + upd):.0f} ms = {(roll + upd) / plain_s:.1f}x one plain pass: rollout "
          f"(generation, π_old/π_ref passes, gold and proxy) {1e3 * roll:.0f} ms, learning (2 epochs × 2 minibatches) "
          f"{1e3 * upd:.0f} ms")
    assert all(r >= TARGET for r in ratios.values()), ratios
