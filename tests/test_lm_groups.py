"""L6's parts (issue 19): annotator groups, reward learning by EM over a mixture of Bradley–Terry models on planted
groups, the M-step's fast objective against `algorithms.maxmin`, the cross-fitted E-step, the max-min selection at
every update of a real run, and the task's bad input."""

import numpy as np
import pytest
import torch

from algorithms.config import ConfigError
from algorithms.maxmin import mixture_mstep_loss
from algorithms.vmpo import VMPOConfig
from tasks.base import RunSpec
from tasks.lm import groups
from tasks.lm.rlhf import LMRLHFConfig, LMTaskConfig, train_one, worst_cluster

pytestmark = pytest.mark.usefixtures("one_torch_thread", "module_artifacts")


def planted(seed=0, annotators=30, minority=0.2, pairs=60, dim=12, separation=3.0, heldout=20):
    """Synthetic preferences: two true heads (orthogonal, norm `separation`), features N(0, 1), Bradley–Terry labels."""
    g = torch.Generator().manual_seed(seed)
    group = torch.from_numpy(groups.group_of_annotators(annotators, minority))
    heads = torch.zeros(2, dim)
    heads[0, 0], heads[1, 1] = separation, separation

    def draw(n):
        a, b = torch.randn(annotators, n, dim, generator=g), torch.randn(annotators, n, dim, generator=g)
        gap = torch.einsum("upd,ud->up", a - b, heads[group])
        first = torch.rand(annotators, n, generator=g) < torch.sigmoid(gap)
        w, l = torch.where(first[..., None], a, b), torch.where(first[..., None], b, a)
        return w, l, torch.where(first, gap, -gap)

    w, l, _ = draw(pairs)
    hw, hl, hgap = draw(heldout)
    ones = lambda x: torch.ones(x.shape[:2])  # noqa: E731
    pool = torch.cat([w, l]).reshape(-1, dim)
    return groups.Preferences(w, l, ones(w), hw, hl, ones(hw), hgap, group, np.zeros((annotators, pairs, 2)),
                              np.zeros((annotators, pairs, 2)), torch.zeros(dim), torch.ones(dim), pool,
                              np.zeros((len(pool), 2)))


@pytest.mark.parametrize("assignment", ["hard", "soft"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mixture_em_recovers_planted_groups(assignment, seed):
    prefs = planted(seed)
    mix = groups.mixture_em(prefs, clusters=2, assignment=assignment, iterations=20, restarts=3, seed=seed)
    report = groups.mixture_report(prefs, mix)
    assert report["purity"] >= 0.9
    assert report["accuracy_g0"] > 0.7 and report["accuracy_g1"] > 0.7  # each matched component fits its own group


def test_pooled_reward_serves_the_majority():
    prefs = planted(0)
    rep = groups.pooled_report(prefs, groups.pooled_reward(prefs))
    assert rep["pooled_accuracy_g0"] > 0.75 > rep["pooled_accuracy_g1"]


def test_mstep_objective_equals_the_algorithms_core_in_value_and_gradient():
    torch.manual_seed(0)
    U, P, D, M = 5, 7, 4, 2
    diff, mask = torch.randn(U, P, D), (torch.rand(U, P) > 0.3).float()
    resp = torch.softmax(torch.randn(U, M), -1)
    W1 = torch.randn(M, D, requires_grad=True)
    W2 = W1.detach().clone().requires_grad_(True)
    core = mixture_mstep_loss(torch.einsum("upd,md->upm", diff, W1), mask, resp, reduction="per_cluster")[0]
    core = core + groups.L2 * W1.pow(2).sum()
    weight = (resp[:, None, :] * mask[..., None]).reshape(-1, M)
    fast = groups.mstep_objective(diff.reshape(-1, D), weight, W2)
    core.backward()
    fast.backward()
    torch.testing.assert_close(fast, core)
    torch.testing.assert_close(W2.grad, W1.grad)


def test_crossfit_folds_partition_each_annotators_pairs():
    mask = (torch.rand(3, 9) > 0.2).float()
    f0, f1 = groups._folds(mask)
    torch.testing.assert_close(f0 + f1, mask)
    assert float((f0 * f1).sum()) == 0.0


def test_annotator_groups_and_utilities():
    assert groups.group_of_annotators(20, 0.2).tolist() == [0] * 16 + [1] * 4
    u = groups.utilities("sentiment-brevity", ["I love thee well [EOS]", "[EOS]", " ".join(["word"] * 12) + " [EOS]"])
    assert u.shape == (3, 2) and u[0, 0] > 0.5 and u[1, 0] == 0.0
    np.testing.assert_allclose(u[:, 1], [1 - 2 * 4 / 10, 1.0, -1.0])


def test_worst_cluster_picks_the_lowest_mean_utility():
    learned = torch.tensor([[0.5, -1.0, 2.0], [0.1, 0.0, -3.0]])  # means 0.3, -0.5, -0.5: the lower index wins a tie
    chosen, rows = worst_cluster(learned)
    assert chosen == 1 and dict(rows)["maxmin/cluster"] == 1.0


TASK = LMTaskConfig(corpus="english", stages="tiny", groups="sentiment-brevity", reward="groups", eval_prompts=4,
                    train_prompts=64, final_prompts=6, final_samples=2, annotators=5, annotator_pairs=20,
                    annotator_heldout_pairs=5, pair_pool=120)


def test_maxmin_run_optimises_the_worst_cluster_at_every_update():
    loop = LMRLHFConfig(updates=4, prompts_per_update=4, eval_every=2, group_reward="maxmin", em_iterations=3,
                        em_restarts=1, advantage="value")
    res = train_one(RunSpec("lm-english-groups", TASK, "vmpo", VMPOConfig(), loop, 0))
    assert res.status == "ok"
    by = {}
    for step, metric, value in res.rows:
        by.setdefault(step, {})[metric] = value
    for step in range(1, 5):
        u = [by[step][f"maxmin/utility_c{m}"] for m in range(2)]
        assert by[step]["maxmin/cluster"] == float(np.argmin(u))
    for name in ("final/utility_sentiment", "final/utility_brevity", "mixture/hard/purity", "mixture/soft/purity",
                 "groups/pooled_accuracy_g1", "groups/utility_sd_g0"):
        assert name in by[0]


def test_group_task_bad_input_names_the_field():
    with pytest.raises(ConfigError, match="reward = 'groups'"):
        LMTaskConfig(corpus="english", reward="groups")
    with pytest.raises(ConfigError, match="minority"):
        LMTaskConfig(corpus="english", groups="sentiment-brevity", reward="groups", minority=0.7)
    with pytest.raises(ConfigError, match="groups"):
        LMTaskConfig(groups="sentiment-brevity")
