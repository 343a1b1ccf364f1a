"""L7's parts (issue 19): GRO's gradient on a real LM batch equals the paper's stated form, and the passes and gradient
steps the L7 report states are the ones each method's runs took."""

import pytest
import torch

from algorithms.gro import GROConfig
from suite import report
from suite.questions import get_question
from suite.questions.lm_gro import ONE_STEP_SPLIT, SCALES, gro_label
from suite.store import Store
from tasks.base import RunSpec
from tasks.lm.rlhf import Learner, LMRLHFConfig, LMTaskConfig, Rewards, accept_reject, task_prompts
from tasks.seeding import generator

pytestmark = pytest.mark.usefixtures("one_torch_thread", "module_artifacts")

TASK = LMTaskConfig(corpus="english", stages="tiny", eval_prompts=4, train_prompts=64, final_prompts=6, final_samples=2)


@pytest.mark.parametrize("scale", [0.1, 1.0])
def test_gro_gradient_equals_its_stated_form_on_the_lm_batch(scale):
    """∇L = −(1/N) Σ_i f(A_i)·w(sg[s_i] − a_i)·∇ log π_θ(y_i|x) with A the leave-one-out advantage of r − β·k1, f the
    identity, s = c·log π_θ, a the mean s of the prompt's other samples and w(u) = 2σ(−sgn(A)·u) (`[GRO] §5`, eq. 35),
    computed here from the batch's tensors without `algorithms.gro`, against autograd through the method's loss."""
    B, K, beta = 4, 4, 0.05
    cfg = GROConfig(reward_kl=beta, score_scale=scale)
    learner = Learner(RunSpec("lm-english", TASK, "gro", cfg, LMRLHFConfig(epochs=1, minibatches=1), 0))
    rewards = Rewards(TASK, learner.tokenizer)
    ro = learner.rollout(task_prompts(TASK, "train", B), rewards, generator(0, "t"), k=K)
    score, target = learner.scores(ro)
    label, _ = accept_reject(score.reshape(B, K))
    batch, _ = learner.batch(ro, torch.arange(B), score, target, label, None, B, K)
    params = [p for p in learner.policy.parameters() if p.requires_grad]
    loss, _ = learner.method(batch)
    got = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)

    r = batch.score - beta * (batch.logp_old - batch.logp_ref)  # RLOO's k1 KL in the reward, at the sampling policy
    adv = r - (r.sum(1, keepdim=True) - r) / (K - 1)  # leave-one-out
    s = scale * batch.logp.detach()
    anchor = (s.sum(1, keepdim=True) - s) / (K - 1)
    w = 2.0 * torch.sigmoid(-torch.sign(adv) * (s - anchor))
    stated = -(adv * w * batch.logp).sum() / (B * K)
    want = torch.autograd.grad(stated, params, allow_unused=True)
    for g, h in zip(got, want):
        if g is None or h is None:
            assert g is None and h is None
            continue
        torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-6)


def test_l7_report_states_the_passes_and_steps_the_runs_took(tmp_path):
    question = get_question("L7")
    points = question.grid("smoke")
    from suite.runner import execute

    store = Store(tmp_path / "results")
    execute(points, store, workers=1, progress=False)
    analysis, runs = report.analyse(question, points, store)
    table = analysis.tables[0][1].set_index("method")
    for p in points:
        cfg = p.spec.train_config
        assert float(table.loc[p.variant, "passes per sample"]) == cfg.epochs
        assert float(table.loc[p.variant, "gradient steps"]) == cfg.updates * cfg.epochs * cfg.minibatches
    one = [p.spec.train_config for p in points if p.variant in (gro_label(SCALES[-1]), "RLOO")]
    many = [p.spec.train_config for p in points if p.variant in ("GRPO", "DPO")]
    assert all(c.epochs == c.minibatches == 1 for c in one)  # no ratio: one gradient step per rollout batch
    assert all(c.epochs * c.minibatches == 4 for c in many)
    # the same samples for every method: one-step methods run ONE_STEP_SPLIT× the updates on batches as much smaller
    assert {c.updates * c.prompts_per_update for c in one + many} == {one[0].updates * one[0].prompts_per_update}
    assert one[0].updates == ONE_STEP_SPLIT * many[0].updates


def test_an_updates_override_keeps_the_same_samples_for_every_method():
    from suite import cli

    args = cli.build_parser().parse_args(["run", "L7", "--set", "train.updates=80"])
    _, _, points = cli._plan(args, "L7")
    samples = {p.variant: p.spec.train_config.updates * p.spec.train_config.prompts_per_update for p in points}
    assert set(samples.values()) == {80 * 16}
    assert {p.spec.train_config.updates for p in points if p.variant == "RLOO"} == {80 * ONE_STEP_SPLIT}
