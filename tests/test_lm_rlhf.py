"""The LM RLHF loop: token plumbing (padding, closed-form KL, sampling), PPO's ratio at θ_old, every method end to end,
the fixed score set (the same prompts and sampling noise for every seed and method), and the LM questions' verdict rules
on synthetic stored runs (premises, diverged runs, the knob's groups).

Artifacts are the tiny stages (`tasks.lm.rlhf.TINY_STAGES`), built once per session in a temporary directory.
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
from tasks.lm import rlhf as lm_rlhf
from tasks.lm.rlhf import Learner, LMRLHFConfig, LMTaskConfig, Rewards, final_scores, score_sets, train_one
from tasks.lm.tokens import encode_prompts, forward_response, gather_tokens, sample, token_kl
from tasks.seeding import generator

pytestmark = pytest.mark.usefixtures("one_torch_thread", "module_artifacts")

TASK = LMTaskConfig(stages="tiny", eval_prompts=4, train_prompts=64, final_prompts=6, final_samples=2)
LOOP = LMRLHFConfig(updates=2, prompts_per_update=4, eval_every=2, epochs=2, minibatches=2)


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
    for key in ("reward/gold", "reward/proxy", "kl/ref_seq", "eval/gold", "eval/kl_ref", "eval/proxy", "final/gold",
                "final/kl_ref", "final/proxy", "final/well_formed", "update/grad_norm", "labels/boundary_ties"):
        assert key in metrics, key
    assert all(math.isfinite(v) for _, _, v in result.rows)
    assert max(s for s, m, _ in result.rows if m == "eval/gold") == LOOP.updates
    assert sorted(s for s, m, _ in result.rows if m == "final/gold") == [0, LOOP.updates]


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
    with pytest.raises(ConfigError, match="LMTaskConfig.final_samples"):
        LMTaskConfig(final_samples=0)
    with pytest.raises(ConfigError, match="LMRLHFConfig.final_every"):
        LMRLHFConfig(final_every=-1)


# ---------------------------------------------------------------------------------------------------- the fixed score set
def _finals(rows, prefix="final/"):
    return {(s, m): v for s, m, v in rows if m.startswith(prefix)}


def test_the_score_set_is_the_same_prompts_and_sampling_noise_for_every_seed_and_method():
    """The starting policy is scored identically by every run (paired differences), and two learners holding the same
    policy score the same numbers whatever their run seed: the set's generator is the task's, not the run's."""
    a = train_one(_spec("vmpo", VMPOConfig(), seed=0))
    b = train_one(_spec("awr", None, seed=3))
    start_a = {m: v for (s, m), v in _finals(a.rows).items() if s == 0}
    start_b = {m: v for (s, m), v in _finals(b.rows).items() if s == 0}
    assert start_a == start_b and set(start_a) == {"final/gold", "final/proxy", "final/kl_ref", "final/well_formed",
                                                 "final/distinct_1", "final/distinct_2", "final/prompt_distinct_2"}
    assert start_a["final/kl_ref"] == 0.0  # the start is the reference itself
    l0, l1 = Learner(_spec(seed=0)), Learner(_spec(seed=5))
    rewards = Rewards(TASK, l0.tokenizer)
    assert final_scores(l0, rewards, TASK) == final_scores(l1, rewards, TASK)


def test_the_cached_start_evaluation_equals_a_fresh_one():
    spec = _spec("vmpo", VMPOConfig())
    lm_rlhf._START_SCORES.clear()
    fresh = _finals(train_one(spec).rows)
    assert lm_rlhf._START_SCORES  # filled by that run
    cached = _finals(train_one(spec).rows)
    assert fresh == cached


def test_score_set_sizes_and_the_train_prompt_counterpart():
    heldout, train, k = score_sets(TASK)
    assert len(heldout) == 6 and len(set(heldout)) == 6 and train == [] and k == 0
    small = dataclasses.replace(TASK, train_prompts=4, final_train=True)
    heldout, train, k = score_sets(small)
    assert len(train) == 4 and k == 2  # ceil(6 / 4): as many samples as the held-out set has prompts
    result = train_one(_spec("awr", None, task=small, loop=dataclasses.replace(LOOP, final_every=1)))
    steps = sorted(s for s, m, _ in result.rows if m == "final_train/gold")
    assert steps == [0, 1, 2] and sorted(s for s, m, _ in result.rows if m == "final/gold") == [0, 1, 2]
    assert any(m == "eval_train/gold" for _, m, _ in result.rows)
    assert not any(m == "eval_train/gold" for _, m, _ in train_one(_spec("awr", None)).rows)


def test_a_dropout_run_does_not_depend_on_what_its_process_ran_before():
    spec = _spec("vmpo", VMPOConfig(), loop=dataclasses.replace(LOOP, dropout=0.2))
    a = train_one(spec)
    torch.rand(1000)  # move the global RNG, as another run in the same worker would
    b = train_one(spec)
    assert a.rows == b.rows


def test_boundary_ties_are_the_share_of_prompts_tied_at_the_accept_reject_line():
    result = train_one(_spec("pmpo", PMPOConfig(alpha=0.5, beta=0.5)))
    ties = [v for _, m, v in result.rows if m == "labels/boundary_ties"]
    assert len(ties) == LOOP.updates and all(0.0 <= t <= 1.0 for t in ties)
    assert all(abs(t * LOOP.prompts_per_update - round(t * LOOP.prompts_per_update)) < 1e-9 for t in ties)


# ---------------------------------------------------------------------------------------------------- verdict rules
def _synthetic(cells: dict[tuple[str, str], list[dict]], diverged: set = frozenset()):
    """runs and rows frames as the store gives them: cells maps (task, variant) to per-seed {(step, metric): value}."""
    import pandas as pd

    runs, rows = [], []
    for (task, variant), per_seed in cells.items():
        for seed, values in enumerate(per_seed):
            rid = f"{task}/{variant}/{seed}"
            runs.append(dict(run_id=rid, task=task, variant=variant, seed=seed,
                             status="diverged" if (variant, seed) in diverged else "ok"))
            rows += [dict(run_id=rid, seed=seed, step=s, metric=m, value=v) for (s, m), v in values.items()]
    return pd.DataFrame(runs), pd.DataFrame(rows)


def _gold(start, end, extra: dict | None = None):
    return {(0, "final/gold"): start, (40, "final/gold"): end, **(extra or {})}


def test_l3_without_the_reference_refresh_is_never_not_supported():
    import numpy as np
    from suite.questions.lm import LM, PMPO_VARIANTS, LMPMPO

    ar, acc, rej, rej_low = (label for label, _ in PMPO_VARIANTS)
    g = np.random.default_rng(0)
    cells = {(LM, v): [_gold(0.0, mu + 0.01 * g.standard_normal()) for _ in range(5)]
             for v, mu in ((ar, 0.1), (acc, 1.0), (rej, 1.0), (rej_low, 0.5), ("DPO", 2.0))}  # AR loses everywhere
    runs, rows = _synthetic(cells)
    v = LMPMPO().analyse(runs, rows, np.random.default_rng(0)).verdicts[0]
    assert v.outcome == "inconclusive" and "refresh" in v.decide
    assert all(c.outcome != "not supported" for c in v.checks if c.kind == "verdict")
    assert any("the data alone say not supported" in c.statistic for c in v.checks)


def test_l2_reads_the_verdict_per_dropout_p_that_ran_with_the_base_model_premise_met():
    import numpy as np
    from suite.questions.lm import BASE_DROPOUT, DROPOUT_KL, LEVELS, LM, SMALL, SWEEP, LMDropout

    assert BASE_DROPOUT == 0.1  # the base model is pretrained and SFT'd with GPT-2's dropout: the premise holds
    g = np.random.default_rng(1)
    mu = {"PPO": 1.0, "V-MPO": 1.2, "AWR": 1.1, "DAR": 1.0}
    for sweep in (SWEEP, (0.0, 0.1)):  # `paper` runs every level; `quick` only 0 and 0.1
        cells = {}
        for m, base in mu.items():
            for p in (sweep if m in ("PPO", "V-MPO") else (0.0, 0.1)):
                cells[(LM, f"{m} p={p:g}")] = [_gold(0.0, base - (3 * p if m == "V-MPO" else p) + 0.01 * g.standard_normal(),
                                                     {(1, "first/ratio_std"): p, (1, "first/clipfrac"): p / 2})
                                               for _ in range(5)]
        cells[(LM, DROPOUT_KL)] = [_gold(0.0, 1.2 + 0.01 * g.standard_normal()) for _ in range(5)]
        for m in ("V-MPO", "AWR", "DAR"):
            for p in (0.0, 0.1):
                cells[(SMALL, f"{m} p={p:g}")] = [_gold(0.0, 1.0 + 0.01 * g.standard_normal(),
                                                        {(0, "final_train/gold"): 0.0, (40, "final_train/gold"): 1.0})
                                                  for _ in range(5)]
        runs, rows = _synthetic(cells)
        v = LMDropout().analyse(runs, rows, np.random.default_rng(0)).verdicts[0]
        groups = {c.group for c in v.checks if c.kind == "verdict"}
        ran = [p for p in LEVELS if p in sweep]
        assert groups == {f"dropout p={p:g}" for p in ran} and v.by == "dropout p"
        assert v.outcome == "not supported"  # dropout costs V-MPO three times what it costs PPO, premise met
        assert any(c.name.startswith(DROPOUT_KL) for c in v.checks)
        assert ("planned at `paper`" in v.sensitivity) == (len(ran) < len(LEVELS))
        small = [c for c in v.checks if c.kind == "verdict" and c.name.startswith("(3)")]
        assert len(small) == 1 and small[0].outcome == "inconclusive" and "overfits" in small[0].decide


def test_l3_with_the_reference_refresh_can_read_not_supported():
    import numpy as np
    from suite.questions.lm import LM, PMPO_VARIANTS, LMPMPO

    ar, acc, rej, rej_low = (label for label, _ in PMPO_VARIANTS)
    g = np.random.default_rng(0)
    refreshed = {(10, "ref/refreshed"): 1.0, (20, "ref/refreshed"): 1.0}
    cells = {(LM, v): [_gold(0.0, mu + 0.01 * g.standard_normal(), refreshed) for _ in range(5)]
             for v, mu in ((ar, 0.1), (acc, 1.0), (rej, 1.0), (rej_low, 0.5), ("DPO", 2.0))}  # AR loses everywhere
    runs, rows = _synthetic(cells)
    analysis = LMPMPO().analyse(runs, rows, np.random.default_rng(0))
    v = analysis.verdicts[0]
    assert v.outcome == "not supported" and v.checks[0].outcome == "supported"
    assert "frontier.png" in analysis.figures
    # the same gold, but accept-only and DPO end 20× further from the SFT model: the end-of-budget gap is not read
    far = {**refreshed, (0, "final/kl_ref"): 0.0, (40, "final/kl_ref"): 60.0}
    near = {**refreshed, (0, "final/kl_ref"): 0.0, (40, "final/kl_ref"): 3.0}
    cells = {(LM, v): [_gold(0.0, mu + 0.01 * g.standard_normal(), far if v in (acc, "DPO") else near)
                       for _ in range(5)]
             for v, mu in ((ar, 0.1), (acc, 1.0), (rej, 1.0), (rej_low, 0.5), ("DPO", 2.0))}
    runs, rows = _synthetic(cells)
    v = LMPMPO().analyse(runs, rows, np.random.default_rng(0)).verdicts[0]
    gated = [c for c in v.checks if c.kind == "verdict" and ("accept" in c.name.split("−")[-1] or "DPO" in c.name)]
    assert gated and all(c.outcome == "inconclusive" and "comparable" in c.statistic for c in gated)
    assert v.outcome == "not supported"  # reject β=2 ends at comparable KL and still beats accept & reject


def test_l4_diverged_runs_feed_no_number_and_the_first_to_over_optimise_is_read_off_the_plotted_curve():
    import numpy as np
    from suite.questions.lm import PROXY, LMRewardHacking

    def run(mid, end, peak_at):
        curve = {(s, "eval/gold"): (1.0 if s == peak_at else 0.0) for s in range(0, 101, 10)}
        return {(0, "final/gold"): 0.0, (50, "final/gold"): mid, (100, "final/gold"): end,
                (0, "final/proxy"): 0.0, (50, "final/proxy"): 1.0, (100, "final/proxy"): 2.0, **curve}

    g = np.random.default_rng(2)
    cells = {(PROXY, "PPO"): [{(0, "final/gold"): 0.0, (0, "final/proxy"): 0.0, (0, "eval/gold"): 0.0,
                               (10, "eval/gold"): -2.0} for _ in range(5)],
             (PROXY, "V-MPO"): [run(1.0 + 0.01 * g.standard_normal(), 0.2, 60) for _ in range(5)],
             (PROXY, "DAR"): [run(1.0 + 0.01 * g.standard_normal(), 0.1, 30) for _ in range(5)]}
    runs, rows = _synthetic(cells, diverged={("PPO", s) for s in range(5)})
    analysis = LMRewardHacking().analyse(runs, rows, np.random.default_rng(0))
    v = analysis.verdicts[0]
    ppo = [c for c in v.checks if c.group == "PPO" and c.kind == "verdict"]
    assert all(c.outcome == "inconclusive" and "diverged" in c.statistic for c in ppo)
    assert {c.outcome for c in v.checks if c.kind == "verdict" and c.group in ("V-MPO", "DAR")} == {"supported"}
    assert v.outcome == "inconclusive" and v.by == "method"
    assert "DAR over-optimises first" in v.summary and "update 30" in v.summary and "PPO 5/5 diverged" in v.summary


def test_l1_an_adaptive_eta_that_does_not_move_leaves_the_verdict_open_whatever_the_gold():
    import numpy as np
    from suite.questions.lm import ETAS, LM, LMTemperature
    from suite.questions.bandits import eta_label

    g = np.random.default_rng(3)
    eta_path = {(u, "dual/eta"): 1.0 + 0.01 * u for u in range(1, 41)}  # 1.01 -> 1.4: a factor 1.39 < 2
    cells = {(LM, eta_label(e)): [_gold(0.0, 2.0 + 0.01 * g.standard_normal()) for _ in range(5)] for e in ETAS}
    cells[(LM, "adaptive η")] = [_gold(0.0, 0.5 + 0.01 * g.standard_normal(), eta_path) for _ in range(5)]
    runs, rows = _synthetic(cells)
    v = LMTemperature().analyse(runs, rows, np.random.default_rng(0)).verdicts[0]
    premise = next(c for c in v.checks if c.name.startswith("(a)"))
    assert premise.outcome == "inconclusive" and "1.39" in premise.statistic
    assert v.outcome == "inconclusive"  # the data alone (adaptive far below every fixed η) would say not supported
    assert any("the data alone say not supported" in c.statistic for c in v.checks if c.name.startswith("(b)"))
    cells[(LM, "adaptive η")] = [_gold(0.0, 0.5, {(1, "dual/eta"): 1.0, (40, "dual/eta"): 5.0}) for _ in range(5)]
    runs, rows = _synthetic(cells)
    v = LMTemperature().analyse(runs, rows, np.random.default_rng(0)).verdicts[0]
    assert v.outcome == "not supported"  # η moved: the comparison tests adaptation, and it loses


def test_l5_a_run_that_diverged_after_passing_kappa_keeps_its_gold_there():
    """Gold at matched KL κ is read off the path; a divergence beyond κ does not count, one before κ scores the floor."""
    import numpy as np
    from suite.questions.lm import FLOOR, LM, LMDAR, gold_at_kl, reached_kl

    def path(points, g):
        return {**{(s, "final/kl_ref"): k for s, k, _ in points}, **{(s, "final/gold"): v + 0.01 * g for s, _, v in points}}

    rng = np.random.default_rng(0)
    far = [(0, 0.0, 0.0), (20, 4.0, 0.4)]                  # diverged at update 39, after passing κ = 2
    short = [(0, 0.0, 0.0), (20, 1.0, 0.1)]                # diverged before reaching κ = 2
    cells = {(LM, "DAR"): [path(far, rng.standard_normal()) for _ in range(3)]
             + [path(short, rng.standard_normal()) for _ in range(2)],
             (LM, "PPO"): [path([(0, 0.0, 0.0), (20, 1.0, 0.1), (40, 2.0, 0.2)], rng.standard_normal()) for _ in range(5)],
             (LM, "DPO"): [path([(0, 0.0, 0.0), (20, 1.0, 0.1), (40, 2.0, 0.2)], rng.standard_normal()) for _ in range(5)]}
    runs, rows = _synthetic(cells, diverged={("DAR", s) for s in range(5)})
    at = gold_at_kl(rows, 2.0)
    assert reached_kl(rows)[f"{LM}/DAR/0"] == 4.0 and abs(at[f"{LM}/DAR/0"] - 0.2) < 0.05
    v = LMDAR().analyse(runs, rows, np.random.default_rng(0)).verdicts[0]
    assert "κ" in v.summary and FLOOR == -1.0
