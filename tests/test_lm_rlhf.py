"""The LM RLHF loop: token plumbing (padding, closed-form KL, sampling), PPO's ratio at θ_old, every method end to end.

Artifacts are the tiny stages (`tasks.lm_rlhf.TINY_STAGES`), built once per session in a temporary directory.
"""

import dataclasses
import math

import pytest
import torch
from torch.nn import functional as F

from algorithms import REGISTRY
from algorithms.config import ConfigError
from algorithms.dpo import DPOConfig
from algorithms.gro import GROConfig
from algorithms.pmpo import PMPOConfig
from algorithms.ppo import PPOConfig
from algorithms.sft import SFTConfig
from algorithms.vmpo import VMPOConfig
from tasks.base import RunSpec
from tasks.lm_rlhf import Learner, LMRLHFConfig, LMTaskConfig, Rewards, train_one
from tasks.lm_tokens import encode_prompts, forward_response, gather_tokens, sample, token_kl
from tasks.seeding import generator

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TASK = LMTaskConfig(stages="tiny", eval_prompts=4, train_prompts=64)
LOOP = LMRLHFConfig(updates=2, prompts_per_update=4, eval_every=2, epochs=2, minibatches=2)


@pytest.fixture(scope="module", autouse=True)
def artifacts(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("EMRL_ARTIFACTS", str(tmp_path_factory.mktemp("artifacts")))
    yield
    mp.undo()


def _spec(algo="ppo", cfg=None, loop=LOOP, seed=0, task=TASK):
    return RunSpec("lm-grammar", task, algo, REGISTRY[algo].Config() if cfg is None else cfg, loop, seed)


@pytest.fixture(scope="module")
def learner():
    return Learner(_spec())


# ---------------------------------------------------------------------------------------------------- token plumbing
def test_sequence_logp_is_the_masked_token_sum_whatever_the_padding(learner):
    """Left-padded prompts and right-padded responses give each row the log-probs it has alone, unpadded."""
    model, tok = learner.policy, learner.tokenizer
    model.eval()
    prompts = ["the dog sees a cat .", "a big red fox likes the good bird and the fish ."]
    p_ids, p_mask = encode_prompts(tok, prompts)
    assert p_mask[0, 0] == 0 and p_mask[1].all()  # the shorter prompt is left-padded
    r_ids, r_mask = sample(model, p_ids, p_mask, max_new_tokens=8, temperature=1.0, generator=generator(0, "t"),
                           eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    r_mask[0, 3:] = 0  # force right padding in row 0
    r_ids[0, 3:] = tok.pad_token_id
    with torch.no_grad():
        logprobs, _ = forward_response(model, p_ids, p_mask, r_ids, r_mask)
        tokens = gather_tokens(logprobs, r_ids, r_mask)
        for i in range(2):
            ids = torch.cat([p_ids[i][p_mask[i] > 0], r_ids[i][r_mask[i] > 0]])[None]
            n_p, n_r = int(p_mask[i].sum()), int(r_mask[i].sum())
            alone = F.log_softmax(model(ids).logits[0].float(), -1)
            want = alone[n_p - 1:n_p - 1 + n_r].gather(-1, ids[0, n_p:, None])[:, 0]
            torch.testing.assert_close(tokens[i, :n_r], want, atol=1e-5, rtol=0)
            assert (tokens[i, n_r:] == 0).all()
            torch.testing.assert_close(tokens[i].sum(), want.sum(), atol=1e-4, rtol=0)


def test_sampling_with_the_kv_cache_matches_a_teacher_forced_pass(learner):
    """Greedy decoding through the cache picks, at every step, the argmax of the teacher-forced distribution."""
    model, tok = learner.policy, learner.tokenizer
    p_ids, p_mask = encode_prompts(tok, ["the cat helps a dog .", "a fox ."])
    r_ids, r_mask = sample(model, p_ids, p_mask, max_new_tokens=10, temperature=1.0, generator=generator(0, "t"),
                           eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, greedy=True)
    with torch.no_grad():
        logprobs, _ = forward_response(model.eval(), p_ids, p_mask, r_ids, r_mask)
    top = logprobs.argmax(-1)
    assert ((top == r_ids) | (r_mask == 0)).all()
    after_eos = (r_ids == tok.eos_token_id).float().cumsum(-1) - (r_ids == tok.eos_token_id).float()
    assert ((after_eos > 0) <= (r_mask == 0)).all()  # nothing after the first EOS is masked in


def test_closed_form_token_kl_matches_a_direct_sum():
    g = torch.Generator().manual_seed(0)
    logq = F.log_softmax(torch.randn(2, 3, 5, generator=g), -1)
    logp = F.log_softmax(torch.randn(2, 3, 5, generator=g), -1)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    kl = token_kl(logq, logp, mask)
    for b in range(2):
        for t in range(3):
            direct = sum(math.exp(logq[b, t, v]) * (logq[b, t, v] - logp[b, t, v]) for v in range(5)) if mask[b, t] else 0.0
            assert abs(float(kl[b, t]) - float(direct)) < 1e-6


# ---------------------------------------------------------------------------------------------------- PPO at θ = θ_old
def _first_minibatch_metrics(dropout: float):
    spec = _spec(loop=dataclasses.replace(LOOP, dropout=dropout))
    lr = Learner(spec)
    rewards = Rewards(spec.task_config, lr.tokenizer)
    prompts = ["the dog sees a cat .", "a bird likes the fox .", "the bear helps a frog .", "a cat finds the horse ."]
    ro = lr.rollout(prompts, rewards, generator(0, "r"), k=4)
    score, target = lr.scores(ro)
    label = torch.ones(16)
    torch.manual_seed(0)
    batch, _ = lr.batch(ro, torch.arange(4), score, target, label, None, 4, 4)
    return lr.method(batch)[1]


def test_ppo_ratio_is_exactly_one_before_the_first_update_without_dropout():
    m = _first_minibatch_metrics(0.0)
    assert float(m["ratio/mean"]) == pytest.approx(1.0, abs=1e-6)
    assert float(m["ratio/std"]) < 1e-5 and float(m["ratio/clipfrac"]) == 0.0


def test_dropout_makes_ppo_ratio_noisy_at_theta_old():
    m = _first_minibatch_metrics(0.3)
    assert float(m["ratio/std"]) > 1e-2


# ---------------------------------------------------------------------------------------------------- end to end
METHODS = {
    "ppo (token)": ("ppo", PPOConfig()),
    "ppo (sequence)": ("ppo", PPOConfig(ratio_level="sequence")),
    "vmpo": ("vmpo", VMPOConfig(epsilon_eta=0.1)),
    "awr": ("awr", None), "dar": ("dar", None), "dpo": ("dpo", DPOConfig()),
    "pmpo AR": ("pmpo", PMPOConfig(alpha=0.5, beta=0.5)), "pmpo A": ("pmpo", PMPOConfig(alpha=1.0, beta=0.0)),
    "pmpo R": ("pmpo", PMPOConfig(alpha=0.0, beta=2.0)),
    "rloo": ("rloo", None), "grpo": ("grpo", None), "remax": ("remax", None), "reinforce_pp": ("reinforce_pp", None),
    "gro": ("gro", GROConfig()), "sft (accepted)": ("sft", SFTConfig(demonstrations="accepted")),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_runs_end_to_end_at_smoke_scale(name):
    algo, cfg = METHODS[name]
    result = train_one(_spec(algo, cfg))
    assert result.status == "ok", result.diverged
    metrics = {m for _, m, _ in result.rows}
    for key in ("reward/gold", "reward/proxy", "kl/ref_seq", "eval/gold", "eval/kl_ref", "eval/proxy", "eval_train/gold",
                "update/grad_norm"):
        assert key in metrics, key
    assert all(math.isfinite(v) for _, _, v in result.rows)
    assert max(s for s, m, _ in result.rows if m == "eval/gold") == LOOP.updates


def test_same_seed_same_numbers_and_seeds_differ():
    a, b = train_one(_spec("vmpo", VMPOConfig())), train_one(_spec("vmpo", VMPOConfig()))
    assert a.rows == b.rows
    c = train_one(_spec("vmpo", VMPOConfig(), seed=1))
    assert a.rows != c.rows


def test_a_kl_blow_up_is_recorded_as_diverged_with_its_step():
    result = train_one(_spec(loop=dataclasses.replace(LOOP, kl_limit=1e-9)))
    assert result.status == "diverged" and result.diverged["step"] == 2 and "KL" in result.diverged["reason"]


def test_bad_loop_and_task_values_are_refused_with_the_field():
    with pytest.raises(ConfigError, match="LMRLHFConfig.dropout"):
        LMRLHFConfig(dropout=-0.1)
    with pytest.raises(ConfigError, match="LMRLHFConfig.minibatches"):
        LMRLHFConfig(prompts_per_update=2, minibatches=4)
    with pytest.raises(ConfigError, match="LMTaskConfig.temperature"):
        LMTaskConfig(temperature=-1.0)
    with pytest.raises(ConfigError, match="reward"):
        LMTaskConfig(reward="silver")
