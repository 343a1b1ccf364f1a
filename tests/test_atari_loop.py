"""The Atari family's on-policy loop (`tasks/atari_onpolicy.py`): replay equals acting, divergence is recorded,
runs are deterministic, and every core trains end to end with PPO and V-MPO at a tiny budget."""

import dataclasses

import numpy as np
import pytest
import torch

import tasks
from algorithms.config import ConfigError
from algorithms.ppo import PPOConfig
from algorithms.vmpo import VMPOConfig
from suite import costs
from tasks import RunSpec
from tasks.atari import AtariTaskConfig, AtariVecEnv
from tasks.atari_onpolicy import Agent, AtariOnPolicyConfig, CollapseWatch, _sample

TINY = AtariOnPolicyConfig(total_steps=64, num_envs=2, unroll=8, unrolls=2, minibatches=2, epochs=1, eval_episodes=2,
                           eval_max_steps=30, core_memory=4, core_hidden=16, torso_dim=16, eval_every=10**9)
TMAZE = AtariTaskConfig(tmaze_length=3)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(algo, cfg, train, task="tmaze-memory", task_cfg=TMAZE, seed=0):
    return tasks.TASKS[task].family.train([RunSpec(task, task_cfg, algo, cfg, train, seed)])[0]


@pytest.mark.parametrize("core", ["ff", "lstm", "trxl", "trxl_i", "gtrxl"])
def test_replaying_an_unroll_from_its_stored_state_reproduces_the_actor(core):
    """What makes PPO's ratio exactly 1 before the first update: the learner's logits equal the actor's."""
    cfg = dataclasses.replace(TINY, core=core)
    env = AtariVecEnv("tmaze-memory", [1, 2, 3], TMAZE)
    torch.manual_seed(0)
    agent = Agent(env.obs_shape, env.num_actions, cfg)
    gen = torch.Generator().manual_seed(0)
    state, first, obs = agent.core.initial_state(env.n), torch.ones(env.n, dtype=torch.bool), env.obs
    T = 6
    acted, seen, firsts, starts = [], [], [], []
    with torch.no_grad():
        for t in range(3 * T):  # three unrolls; the middle one is replayed
            if t == T:
                starts = tuple(s.clone() for s in state)
            o = torch.from_numpy(obs)
            logits, _, state = agent(o[None], state, first[None])
            acted.append(logits[0]), seen.append(o), firsts.append(first)
            obs, _, terminated, truncated, _, _ = env.step(_sample(logits[0], gen).numpy())
            first = torch.from_numpy(terminated | truncated)
        replay, _, _ = agent(torch.stack(seen[T:2 * T]), starts, torch.stack(firsts[T:2 * T]))
    torch.testing.assert_close(replay, torch.stack(acted[T:2 * T]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("core", ["ff", "lstm", "trxl", "trxl_i", "gtrxl"])
@pytest.mark.parametrize("algo,cfg,loop", [("ppo", PPOConfig(ent_coef=0.01), {}),
                                           ("vmpo", VMPOConfig(epsilon_eta=0.02), dict(returns="nstep", max_grad_norm=None))])
def test_every_core_trains_end_to_end(core, algo, cfg, loop):
    r = run(algo, cfg, dataclasses.replace(TINY, core=core, **loop))
    assert r.status == "ok", r.error or r.diverged
    metrics = {m for _, m, _ in r.rows}
    assert {"eval/return", "update/kl", "update/grad_norm"} <= metrics
    assert all(np.isfinite(v) for _, _, v in r.rows)


def test_minatar_trains_end_to_end():
    r = run("ppo", PPOConfig(), TINY, task="minatar-breakout", task_cfg=AtariTaskConfig(max_frames=100))
    assert r.status == "ok"
    assert any(m == "eval/return" for _, m, _ in r.rows)


def test_same_seed_same_numbers_and_seeds_differ():
    a, b = run("ppo", PPOConfig(), TINY), run("ppo", PPOConfig(), TINY)
    c = run("ppo", PPOConfig(), TINY, seed=1)
    assert a.rows == b.rows
    assert a.rows != c.rows


def test_a_kl_blow_up_is_recorded_as_diverged_with_step_and_reason():
    r = run("ppo", PPOConfig(), dataclasses.replace(TINY, kl_limit=1e-30, total_steps=128))
    assert r.status == "diverged"
    assert r.diverged["step"] == 32 and "KL" in r.diverged["reason"]


def test_collapse_watch_fires_only_after_learning_and_names_both_steps():
    watch = CollapseWatch(learned=0.5, to=0.0, window=2)
    series = [(1, -0.5), (2, -0.2), (3, 0.4), (4, 0.8), (5, 0.9), (6, 0.1), (7, -0.3)]  # windowed: .., 0.6 at 4, −0.1 at 7
    fired = [(step, watch.update(step, ret)) for step, ret in series]
    assert [s for s, why in fired if why] == [7]
    assert "at step 4" in fired[-1][1] and "peak 0.85" in fired[-1][1]
    never = CollapseWatch(learned=0.5, to=0.0, window=2)
    assert not any(never.update(s, r) for s, r in [(1, -1.0), (2, -1.0), (3, -0.9)])  # low from the start: no collapse


def test_a_collapse_after_learning_is_recorded_as_diverged_at_its_step():
    """The same run with and without the check: training is identical until the check stops it at the first iteration
    whose return falls to `collapse_to` after one reached `collapse_learned` (window 1: the iteration's own return)."""
    loop = dataclasses.replace(TINY, total_steps=40 * TINY.rollout)
    free = run("ppo", PPOConfig(), loop)
    curve = [(s, v) for s, m, v in free.rows if m == "train/episode_return"]
    learned = next(s for s, v in curve if v >= 0.5)
    collapsed = next(s for s, v in curve if s > learned and v <= -0.5)
    watched = run("ppo", PPOConfig(), dataclasses.replace(loop, collapse_learned=0.5, collapse_to=-0.5, collapse_window=1))
    assert free.status == "ok" and watched.status == "diverged"
    assert watched.diverged["step"] == collapsed and f"at step {learned}" in watched.diverged["reason"]
    assert watched.rows == [r for r in free.rows if r[0] <= collapsed][: len(watched.rows)]


def test_random_baseline_is_one_evaluation_at_step_zero():
    r = run("ppo", PPOConfig(), dataclasses.replace(TINY, random_baseline=True))
    assert r.status == "ok" and [(s, m) for s, m, _ in r.rows] == [(0, "eval/return")]


@pytest.mark.parametrize("field,value,allowed", [("core", "gru", "Allowed"), ("unroll", 0, "must be"),
                                                 ("minibatches", 100, "at most"), ("gamma", 1.5, "[0, 1]")])
def test_bad_config_names_the_field(field, value, allowed):
    with pytest.raises(ConfigError, match=field) as e:
        dataclasses.replace(TINY, **{field: value})
    assert allowed in str(e.value)


def test_decoupled_kl_is_refused_for_categorical_policies():
    with pytest.raises(ConfigError, match="decoupled"):
        run("vmpo", VMPOConfig(kl_split="decoupled"), TINY)


# ------------------------------------------------------------------------------------------ verdict rules on made-up runs
import pandas as pd  # noqa: E402

from suite.questions import atari as A  # noqa: E402

STEPS = (512, 1024, 1536, 2048)


def _frames(question, profile="quick", *, curve, final=None, diverged=(), layers=None):
    """runs/rows as the store gives them for `question`'s grid: `curve(variant, task, seed)` gives the training-episode
    return at STEPS, `final(variant, task, seed)` the final evaluation return (default: the curve's last value);
    runs in `diverged` ((variant, seed) pairs) are recorded diverged after their second iteration."""
    runs, rows = [], []
    for p in question.grid(profile):
        rid, cfg = f"{p.variant}/{p.spec.task}/{p.spec.seed}", p.spec.train_config
        div = (p.variant, p.spec.seed) in diverged
        runs.append({"run_id": rid, "task": p.spec.task, "variant": p.variant, "seed": p.spec.seed,
                     "status": "diverged" if div else "ok", "train_config.total_steps": STEPS[-1],
                     "train_config.core_layers": layers or cfg.core_layers, "train_config.eval_episodes": cfg.eval_episodes})
        values = curve(p.variant, p.spec.task, p.spec.seed)
        for step, v in list(zip(STEPS, values))[: 2 if div else None]:
            rows.append({"run_id": rid, "seed": p.spec.seed, "step": step, "metric": "train/episode_return", "value": v})
        if not div:
            f = final(p.variant, p.spec.task, p.spec.seed) if final else values[-1]
            rows.append({"run_id": rid, "seed": p.spec.seed, "step": STEPS[-1], "metric": "eval/return", "value": f})
    return pd.DataFrame(runs), pd.DataFrame(rows)


def _verdict(question, **kw):
    runs, rows = _frames(question, **kw)
    return question.analyse(runs, rows, np.random.default_rng(0))


def _flat(level, seed, spread=0.05):
    return [level + spread * (seed - 2)] * len(STEPS)


def test_every_final_score_is_the_mean_of_at_least_ten_evaluation_episodes_beyond_smoke():
    for q in (A.AtariVMPOvsPPO(), A.AtariDivergence(), A.AtariTrXLFails(), A.AtariMemory()):
        for profile in ("quick", "standard", "paper"):
            assert all(p.spec.train_config.eval_episodes >= 10 for p in q.grid(profile)), (q.name, profile)


def test_a1_runs_the_knob_only_where_it_says_and_its_rule():
    q = A.AtariVMPOvsPPO()
    assert {p.variant for p in q.grid("quick")} == {"PPO", "V-MPO", A.RANDOM}
    paper = {p.variant: p.spec.train_config.lr for p in q.grid("paper") if p.variant.startswith("V-MPO")}
    assert sorted(paper.values()) == sorted(A.VMPO_LRS) and A.A1_KNOB.run_at == ("standard", "paper")
    assert {p.spec.task for p in q.grid("quick")} == {A.BREAKOUT}
    standard = q.grid("standard")
    assert {p.variant for p in standard} == {"PPO", A.RANDOM, *(A._vmpo_label(lr) for lr in A.VMPO_LRS)}
    ale = [p.spec.train_config for p in standard if p.spec.task == A.ALE_BREAKOUT]  # real Atari from `standard` on
    assert len(ale) == 5 * 10 and {c.total_steps for c in ale if not c.random_baseline} == {A.ALE_STEPS["standard"]}
    level = {"PPO": 10.0, "V-MPO": 10.0, A.RANDOM: 0.5}
    a = _verdict(q, curve=lambda v, t, s: _flat(level[v], s))
    assert a.verdicts[0].outcome == "supported"
    level["V-MPO"] = 4.0  # learns, but far below 80% of PPO
    assert _verdict(q, curve=lambda v, t, s: _flat(level[v], s)).verdicts[0].outcome == "not supported"
    level.update({"PPO": 1.0, "V-MPO": 1.0})  # below random + 1: V-MPO does not learn; PPO, the yardstick, neither
    v = _verdict(q, curve=lambda v, t, s: _flat(level[v], s)).verdicts[0]
    outcomes = {c.name: c.outcome for c in v.checks if c.kind == "verdict"}
    assert v.outcome == "not supported" and outcomes["(a) V-MPO learns"] == "not supported"
    assert outcomes["(b) V-MPO ≥ 80% of PPO"] == "inconclusive"  # equal to a PPO that does not learn says nothing
    fig = a.figures["learning_curves.png"]
    assert all(ax.get_title() and ax.get_legend() is None for ax in fig.axes) and fig.legends


def test_a2_rates_are_wilson_and_newcombe_and_the_power_number_is_the_two_proportion_formula():
    # Wilson 0/10: centre = (z²/20)/(1 + z²/10), half the same: [0, z²/(10 + z²)] = [0, 0.2775]
    p, lo, hi = A.wilson(0, 10)
    assert p == 0 and lo == 0 and hi == pytest.approx(1.959964**2 / (10 + 1.959964**2))
    d, lo, hi = A.newcombe(0, 10, 0, 10)  # neither arm diverged: ± the Wilson upper end, not [0, 0]
    assert d == 0 and lo == pytest.approx(-hi) and hi == pytest.approx(0.2775, abs=1e-4)
    assert A.runs_to_separate(0.5, 0.3) == 93  # the textbook two-proportion sample size (Fleiss, no continuity correction)
    assert A.runs_to_separate(0.16, 0.0) == 44
    q = A.AtariDivergence()
    v = _verdict(q, curve=lambda v, t, s: _flat(0.0, s)).verdicts[0]
    assert v.outcome == "inconclusive" and "44 runs per core" in v.decide and "16%" in v.paper
    trxl_i = {(f"TrXL-I lr={lr:g}", s) for lr in A.QUICK_SWEEP_LRS for s in range(3)}
    v = _verdict(q, curve=lambda v, t, s: _flat(0.0, s), diverged=trxl_i).verdicts[0]
    assert v.outcome == "supported"  # 6/6 against 0/6
    gtrxl = {(f"GTrXL lr={lr:g}", s) for lr in A.QUICK_SWEEP_LRS for s in range(3)}
    assert _verdict(q, curve=lambda v, t, s: _flat(0.0, s), diverged=gtrxl).verdicts[0].outcome == "not supported"


def test_a3_area_under_the_curve_counts_a_diverged_run_at_its_floor():
    runs = pd.DataFrame({"run_id": ["a", "b"], "task": [A.MEMORY] * 2, "status": ["ok", "diverged"]})
    rows = pd.DataFrame({"run_id": ["a", "a", "a", "a", "b", "b"], "step": [1, 2, 3, 4, 1, 2], "metric": "train/episode_return",
                         "value": [0.0, 0.0, 1.0, 1.0, 0.5, 0.5]})
    got = A.auc(runs, rows)
    assert got["a"] == pytest.approx(0.5)  # (0 + 0 + 1 + 1) / 4
    assert got["b"] == pytest.approx((0.5 + 0.5 - 1 - 1) / 4)  # −1 from its divergence on


def test_a3_rule_on_areas():
    q = A.AtariMemory()
    early, late, flat = [0.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0], [0.0] * 4  # early and late: the same final return

    def curves(memory: dict, reactive: dict):
        return lambda v, t, s: [x + 0.02 * (s - 2) for x in (memory if t == A.MEMORY else reactive)[v]]

    memory = {"GTrXL": early, "LSTM": late, "feed-forward": flat}
    reactive = {"GTrXL": early, "LSTM": early, "feed-forward": early}
    assert _verdict(q, curve=curves(memory, reactive)).verdicts[0].outcome == "supported"
    regress = {"GTrXL": late, "LSTM": early, "feed-forward": early}  # GTrXL learns the reactive task later than LSTM
    assert _verdict(q, curve=curves(memory, regress)).verdicts[0].outcome == "not supported"
    no_memory_needed = {"GTrXL": early, "LSTM": late, "feed-forward": early}  # the feed-forward core solves it
    v = _verdict(q, curve=curves(no_memory_needed, reactive)).verdicts[0]
    assert v.outcome == "inconclusive" and "feed-forward" in v.decide


def test_a4_is_inconclusive_below_six_layers_whatever_the_data():
    q = A.AtariTrXLFails()
    level = {"TrXL lr=0.0003": 0.0, "TrXL-I lr=0.0003": 1.0, "GTrXL lr=0.0003": 1.0, A.RANDOM: 0.0}
    shallow = _verdict(q, curve=lambda v, t, s: _flat(level[v], s)).verdicts[0]
    assert shallow.outcome == "inconclusive" and "depth not tested" in shallow.summary and "6 layers" in shallow.decide
    assert _verdict(q, curve=lambda v, t, s: _flat(level[v], s), layers=8).verdicts[0].outcome == "supported"
    level["TrXL lr=0.0003"] = 1.0
    assert _verdict(q, curve=lambda v, t, s: _flat(level[v], s), layers=8).verdicts[0].outcome == "not supported"
    level.update({"TrXL-I lr=0.0003": 0.0, "GTrXL lr=0.0003": 0.0, "TrXL lr=0.0003": 0.0})  # no core learns: no test
    assert _verdict(q, curve=lambda v, t, s: _flat(level[v], s), layers=8).verdicts[0].outcome == "inconclusive"


def test_standard_runs_the_claims_where_they_live():
    """A2: ≥ 40 runs per core up to 1e-2 and beyond; A2/A4: cores of ≥ 6 layers; A3: a corridor of ≥ 64 held in a memory
    longer than the corridor; every T-maze run counts a collapse after learning as divergence."""
    sweep = A.AtariDivergence().grid("standard")
    for core in ("TrXL", "TrXL-I", "GTrXL"):
        runs = [p for p in sweep if p.variant.startswith(core + " lr=")]
        assert len(runs) >= 40 and max(p.spec.train_config.lr for p in runs) > 1e-2
    deep = [p.spec.train_config.core_layers for p in A.AtariTrXLFails().grid("standard") if p.variant != A.RANDOM]
    assert min(deep) >= A.DEPTH_TESTED
    memory = A.AtariMemory().grid("standard")
    for p in memory:
        assert p.spec.task_config.tmaze_length >= 64 and p.spec.train_config.core_memory > p.spec.task_config.tmaze_length
    for q in (A.AtariDivergence(), A.AtariTrXLFails(), A.AtariMemory()):
        for profile in ("quick", "standard", "paper"):
            assert all(p.spec.train_config.collapse_learned == 0.5 for p in q.grid(profile) if p.variant != A.RANDOM)
    quick = A.AtariMemory().grid("quick")
    assert {p.spec.task_config.tmaze_length for p in quick} == {16} and not any(p.spec.task_config.tmaze_walk for p in quick)


def test_every_report_names_the_deciding_profile_and_its_estimated_cpu_hours():
    for q in (A.AtariVMPOvsPPO(), A.AtariDivergence(), A.AtariTrXLFails(), A.AtariMemory()):
        assert q.claims[0].decides == "standard"
        note = q.budget_note()
        assert "`standard` (planned to decide)" in note and "CPU-hours" in note
    ppo_steps = A.AtariOnPolicyConfig(total_steps=2048)
    assert costs.atari_cpu_seconds(A.BREAKOUT, ppo_steps) == pytest.approx(2048 * costs.ATARI_SECONDS_PER_STEP["minatar"])
    six = A.AtariOnPolicyConfig(total_steps=2048, core="gtrxl", core_layers=6)
    assert costs.atari_cpu_seconds(A.MEMORY, six) == pytest.approx(3 * costs.atari_cpu_seconds(A.MEMORY, A.AtariOnPolicyConfig(
        total_steps=2048, core="gtrxl", core_layers=2)))
    # --dry-run prices the grids with the same model as the reports
    points = A.AtariDivergence().grid("standard")
    est = costs.estimate([p.spec for p in points], {}, lambda task: "atari")["atari"]
    assert est.cpu_s == pytest.approx(sum(costs.atari_cpu_seconds(p.spec.task, p.spec.train_config) for p in points))


def test_a2_lists_each_diverged_run_with_its_step_and_reason():
    q = A.AtariDivergence()
    runs, rows = _frames(q, curve=lambda v, t, s: _flat(0.0, s), diverged={("GTrXL lr=0.01", 1)})
    runs["diverged_step"] = np.where(runs.status == "diverged", 1024, np.nan)
    runs["diverged_reason"] = np.where(runs.status == "diverged", "return collapse: …", None)
    title, table = q.analyse(runs, rows, np.random.default_rng(0)).tables[0]
    assert title == "Diverged runs" and table.to_dict("records") == [
        {"core and learning rate": "GTrXL lr=0.01", "seed": 1, "step": "1,024", "reason": "return collapse: …"}]


@pytest.mark.parametrize("algo,cfg,core", [("ppo", PPOConfig(), "ff"), ("vmpo", VMPOConfig(), "lstm"),
                                          ("vmpo", VMPOConfig(), "gtrxl")])
def test_a_seed_trained_in_a_group_gets_the_numbers_it_gets_alone(algo, cfg, core):
    """Seeds train in lockstep (stacked agents under vmap); each draws from its own streams, so its rows equal its rows
    alone (a group of one runs without vmap) up to float rounding in batched matrix products."""
    loop = dataclasses.replace(TINY, core=core, total_steps=8 * TINY.rollout)
    family = tasks.TASKS["tmaze-memory"].family
    group = family.train([RunSpec("tmaze-memory", TMAZE, algo, cfg, loop, s) for s in (0, 1, 2)])
    for s, together in enumerate(group):
        alone = family.train([RunSpec("tmaze-memory", TMAZE, algo, cfg, loop, s)])[0]
        assert [r[:2] for r in together.rows] == [r[:2] for r in alone.rows]
        assert np.allclose([r[2] for r in together.rows], [r[2] for r in alone.rows], rtol=1e-4, atol=1e-5)


def test_in_a_group_a_seed_that_collapses_stops_at_its_own_step_and_the_others_go_on():
    loop = dataclasses.replace(TINY, total_steps=40 * TINY.rollout)
    watched = dataclasses.replace(loop, collapse_learned=0.5, collapse_to=-0.5, collapse_window=1)
    family = tasks.TASKS["tmaze-memory"].family
    group = family.train([RunSpec("tmaze-memory", TMAZE, "ppo", PPOConfig(), watched, s) for s in range(4)])
    ends = []
    for s, r in enumerate(group):
        curve = [(st, v) for st, m, v in run("ppo", PPOConfig(), loop, seed=s).rows if m == "train/episode_return"]
        learned = next((st for st, v in curve if v >= 0.5), None)
        collapsed = next((st for st, v in curve if learned is not None and st > learned and v <= -0.5), None)
        assert (r.status, r.diverged and r.diverged["step"]) == (("diverged", collapsed) if collapsed else ("ok", None))
        ends.append(r.rows[-1][0])
    assert len(set(ends)) > 1  # seeds end at their own steps: one that stopped did not stop the others
