"""Annotator groups whose preferences differ, and reward learning from their pooled labels (`[EM-LLM] §8`, L6).

**The population.** `annotators` people label pairs of the SFT model's continuations of training prompts. A share
`1 − minority` of them (the majority) prefer a positive continuation: their utility is VADER's compound sentiment,
the family's gold reward. The rest (the minority) prefer a short one: their utility is `brevity`,
1 − 2·min(words, BREVITY_WORDS)/BREVITY_WORDS, also in [−1, 1]. These are the two groups of Chakraborty et al.
(2024)'s GPT-2 experiment (majority: positive sentiment; minority: conciseness). Annotator i of group g prefers y_1
to y_2 with the Bradley–Terry probability σ(label_scale · (u_g(y_1) − u_g(y_2))) (`[EM-LLM] §8` eq. 8), drawn once
per task (`prompt_seed`), so every run of a task sees the same labels. Each annotator also labels held-out pairs
(held-out prompts), where reward models are scored.

Annotators label pairs from one shared pool and only pairs they have a preference on (VADER scores 78% of the SFT
model's continuations 0: a tie would be a coin flip), the same number each, so that each group's share of the labels
is its share of the annotators.

**The reward models.** r_φ(x, y) = φᵀψ(y): linear in the response's bag of tokens ψ (counts over the policy's
vocabulary, standardised over the training responses). This is the linear reward parametrisation of the paper's
Theorem 1 (`[EM-LLM] §8` eq. 10), and it makes the EM of Algorithm 2 cheap: each M-step fits M convex heads by L-BFGS.
A pilot (seed 0, clean labels, 70/30 split of the untied pairs) chose it over a linear head on the SFT model's final
hidden states: held-out accuracy 0.69 against 0.56 on sentiment, 0.90 against 0.92 on brevity. `pooled_reward` fits one head on every label (single-reward RLHF's
reward model); `mixture_em` runs Algorithm 2 (hard or soft E-step, `algorithms.maxmin`) from random annotator splits
and keeps the restart with the highest marginal likelihood, which reads no group label. Each head's reward is
standardised to mean 0 and standard deviation 1 over the SFT model's training responses, so that the max-min
selection compares the groups' utilities in one unit (the suite's choice; the paper compares raw reward models).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from algorithms.maxmin import (cluster_purity, mixing_log_weights, responsibilities, user_log_likelihood,
                               weighted_bt_nll)
from tasks.lm import english
from tasks.lm.tokens import encode_prompts, hidden_response, sample
from tasks.seeding import generator, stream_seed

GROUPS = {"sentiment-brevity": ("sentiment", "brevity")}
"""Populations by name: the groups' utilities, majority first."""
BREVITY_WORDS = 10
"""brevity = 1 − 2·min(words, 10)/10: +1 for an empty continuation, −1 at 10 words or more (the SFT demonstrations'
length)."""


def brevity(texts: Sequence[str]) -> np.ndarray:
    """The minority's utility of decoded responses: 1 − 2·min(words, BREVITY_WORDS)/BREVITY_WORDS, float64 [N]."""
    n = np.array([len(english.response_text(t)[0].split()) for t in texts], dtype=np.float64)
    return 1.0 - 2.0 * np.minimum(n, BREVITY_WORDS) / BREVITY_WORDS


def utilities(population: str, responses: Sequence[str]) -> np.ndarray:
    """Each group's gold utility of each decoded response: float64 [N, G] (columns in `GROUPS[population]` order)."""
    cols = []
    for name in GROUPS[population]:
        if name == "sentiment":
            cols.append(english.gold_sentiment([english.response_text(t)[0] for t in responses]))
        elif name == "brevity":
            cols.append(brevity(responses))
        else:  # pragma: no cover - GROUPS is static
            raise ValueError(name)
    return np.stack(cols, 1)


def group_of_annotators(annotators: int, minority: float) -> np.ndarray:
    """[U] group index of each annotator: the first round(U·(1 − minority)) are group 0 (the majority), the rest 1."""
    n_major = int(round(annotators * (1.0 - minority)))
    return np.array([0] * n_major + [1] * (annotators - n_major), dtype=np.int64)


# ------------------------------------------------------------------------------------------------ the data


def features(response_ids: Tensor, response_mask: Tensor, vocab: int) -> Tensor:
    """ψ(x, y) [N, V]: how often each token of the vocabulary occurs in the response (its [EOS] included)."""
    return torch.zeros(response_ids.shape[0], vocab, device=response_ids.device).scatter_add_(
        1, response_ids, response_mask.float())


@dataclass
class Preferences:
    """Pairwise labels of every annotator, as features: `w` the preferred response's ψ, `l` the other's.

    Train pairs [U, P, D] (training prompts) with `mask` [U, P] (0: the annotator stated no preference), held-out
    pairs [U, P_h, D] (held-out prompts) with `heldout_mask` and `heldout_gap` (the labeller's own utility of the
    preferred minus the other response: > 0 where the label agrees with the utility); `group` [U]; `utility_w`/`utility_l` [U, P, G] every
    group's gold utility of the two responses (diagnostics); `mu`, `sd` [D] the feature standardisation."""

    w: Tensor
    l: Tensor
    mask: Tensor
    heldout_w: Tensor
    heldout_l: Tensor
    heldout_mask: Tensor
    heldout_gap: Tensor
    group: Tensor
    utility_w: np.ndarray
    utility_l: np.ndarray
    mu: Tensor
    sd: Tensor
    pool: Tensor
    """[2·pool, D] every drawn training response's standardised ψ: the SFT model's responses (`standardiser`)."""
    pool_utility: np.ndarray
    """[2·pool, G] every group's gold utility of those responses."""

    def disagreement(self) -> float:
        """Share of the labelled training pairs whose order the two groups' utilities reverse (strictly): how
        differently the groups rank the same responses (the paper measures diversity as a total variation)."""
        d = self.utility_w - self.utility_l  # [U, P, G]
        return float(np.mean(d[..., 0] * d[..., 1] < 0))


def preferences(policy, tokenizer, train_prompts: Sequence[str], heldout_prompts: Sequence[str], *, population: str,
                minority: float, annotators: int, pairs: int, heldout_pairs: int, pool: int, label_scale: float,
                max_new_tokens: int, temperature: float, seed: int, device: torch.device,
                chunk: int = 256) -> Preferences:
    """Every annotator's labelled pairs (module doc): a shared pool of `pool` pairs of `policy`'s samples (two per prompt,
    prompts drawn with replacement; a quarter as many held-out pairs), from which each annotator labels `pairs` (and
    `heldout_pairs`) drawn among those they have a preference on, so that each group's share of the labels is its share
    of the annotators. All randomness from `seed` (the task's `prompt_seed`)."""
    group = group_of_annotators(annotators, minority)
    eos, pad, vocab = tokenizer.eos_token_id, tokenizer.pad_token_id, len(tokenizer)

    def draw(prompts: Sequence[str], n: int, per: int, stream: str):
        pick = np.random.default_rng(stream_seed(seed, f"groups/{stream}/prompts")).integers(0, len(prompts), n)
        texts = [prompts[i] for i in pick for _ in range(2)]  # two samples of each prompt, adjacent
        gen = generator(seed, f"groups/{stream}/samples", device)
        feats, responses = [], []
        for i in range(0, len(texts), chunk):
            p_ids, p_mask = (x.to(device) for x in encode_prompts(tokenizer, texts[i:i + chunk]))
            r_ids, r_mask = sample(policy, p_ids, p_mask, max_new_tokens=max_new_tokens, temperature=temperature,
                                   generator=gen, eos_id=eos, pad_id=pad)
            feats.append(features(r_ids, r_mask, vocab).cpu())
            responses += [tokenizer.decode(r[m > 0].tolist()) for r, m in zip(r_ids.cpu(), r_mask.cpu())]
        f = torch.cat(feats).reshape(n, 2, -1)
        u = utilities(population, responses).reshape(n, 2, -1)  # [n, 2, G]
        rng = np.random.default_rng(stream_seed(seed, f"groups/{stream}/labels"))
        win, lose, mask, u_w, u_l, gaps = [], [], [], [], [], []
        for g in group:  # each annotator: `per` pairs it has a preference on, then its Bradley–Terry label
            gap_all = u[:, 0, g] - u[:, 1, g]
            idx = rng.permutation(np.flatnonzero(gap_all != 0))[:per]
            m = np.zeros(per, dtype=np.float32)
            m[:len(idx)] = 1.0
            idx = np.concatenate([idx, np.zeros(per - len(idx), dtype=idx.dtype)])
            gap = gap_all[idx]
            first = rng.random(per) < 1.0 / (1.0 + np.exp(-label_scale * gap))
            sel = torch.from_numpy(first)[:, None]
            win.append(torch.where(sel, f[idx, 0], f[idx, 1]))
            lose.append(torch.where(sel, f[idx, 1], f[idx, 0]))
            u_w.append(np.where(first[:, None], u[idx, 0], u[idx, 1]))
            u_l.append(np.where(first[:, None], u[idx, 1], u[idx, 0]))
            mask.append(torch.from_numpy(m))
            gaps.append(torch.from_numpy(np.where(first, gap, -gap)))
        return (torch.stack(win), torch.stack(lose), torch.stack(mask), np.stack(u_w), np.stack(u_l), torch.stack(gaps),
                f.reshape(2 * n, -1), u.reshape(2 * n, -1))

    w, l, mask, uw, ul, _, every, u_every = draw(train_prompts, pool, pairs, "train")
    hw, hl, hmask, _, _, hgap, _, _ = draw(heldout_prompts, max(1, pool // 4), heldout_pairs, "heldout")
    mu, sd = every.mean(0), every.std(0).clamp_min(1e-3)
    z = lambda x: (x - mu) / sd  # noqa: E731
    return Preferences(z(w), z(l), mask, z(hw), z(hl), hmask, hgap, torch.from_numpy(group), uw, ul, mu, sd, z(every),
                       u_every)


# ------------------------------------------------------------------------------------------------ reward learning


L2 = 1e-2
"""Ridge penalty on each head (per pair, on standardised features): keeps a head with few pairs finite."""


def mstep_objective(diff: Tensor, weight: Tensor, W: Tensor) -> Tensor:
    """The M-step's objective for linear heads: `algorithms.maxmin.weighted_bt_nll` of the margins diff·W_mᵀ, plus
    L2·‖W‖². diff [N, D] ψ(y_w) − ψ(y_l) per pair; weight [N, M] γ of the pair's annotator times its mask; W [M, D]."""
    return weighted_bt_nll(diff @ W.T, weight) + L2 * W.pow(2).sum()


def _fit(diff: Tensor, mask: Tensor, resp: Tensor, init: Tensor, *, iters: int = 30) -> Tensor:
    """M-step (`[EM-LLM] §8` Algorithm 2 (b)): heads W [M, D] minimising the responsibility-weighted Bradley–Terry NLL
    (each cluster's mean, `mstep_objective`) + L2·‖W‖², by at most `iters` L-BFGS iterations from `init` (the EM
    warm-starts each M-step from the last one's heads). diff [U, P, D], mask [U, P], resp [U, M]."""
    flat = diff.reshape(-1, diff.shape[-1])
    weight = (resp.detach()[:, None, :] * mask[..., None]).reshape(-1, resp.shape[-1])
    W = init.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([W], lr=1.0, max_iter=iters, tolerance_change=1e-7, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = mstep_objective(flat, weight, W)
        loss.backward()
        return loss

    opt.step(closure)
    return W.detach()


def accuracy(W: Tensor, w: Tensor, l: Tensor, mask: Tensor) -> Tensor:
    """[M, U] share of each annotator's (unmasked) pairs that head m orders as the annotator did."""
    right = (torch.einsum("upd,md->mup", w - l, W) > 0).double() * mask.double()
    return right.sum(-1) / mask.double().sum(-1).clamp_min(1.0)


def label_ceiling(prefs: Preferences) -> list[float]:
    """Per group: the share of its held-out labels that its own utility orders the same way (the accuracy of a perfect
    reward model under the annotators' Bradley–Terry noise)."""
    agree = (prefs.heldout_gap > 0).double() * prefs.heldout_mask.double()
    per = agree.sum(1) / prefs.heldout_mask.double().sum(1).clamp_min(1.0)
    return [float(per[prefs.group == g].mean()) for g in range(int(prefs.group.max()) + 1)]


def pooled_report(prefs: Preferences, W: Tensor) -> dict[str, float]:
    """The pooled head's held-out accuracy on each group's annotators, each group's label ceiling, and the mean and
    standard deviation of each group's utility over the SFT model's responses (the unit of the L6 report's gains)."""
    acc = accuracy(W, prefs.heldout_w, prefs.heldout_l, prefs.heldout_mask)[0]
    out = {"disagreement": prefs.disagreement()}
    for g, ceiling in enumerate(label_ceiling(prefs)):
        out[f"pooled_accuracy_g{g}"] = float(acc[prefs.group == g].mean())
        out[f"label_ceiling_g{g}"] = ceiling
        out[f"utility_mean_g{g}"] = float(prefs.pool_utility[:, g].mean())
        out[f"utility_sd_g{g}"] = float(prefs.pool_utility[:, g].std())
    return out


def pooled_reward(prefs: Preferences) -> Tensor:
    """One head on every label (single-reward RLHF's reward model): W [1, D]."""
    diff = prefs.w - prefs.l
    return _fit(diff, prefs.mask, torch.ones(diff.shape[0], 1, dtype=diff.dtype), torch.zeros(1, diff.shape[-1]), iters=100)


@dataclass
class Mixture:
    """The EM result: heads W [M, D], responsibilities [U, M], the marginal log-likelihood per annotator, and how many
    E-steps changed some annotator's cluster in the last iteration (0: a fixed point)."""

    W: Tensor
    resp: Tensor
    loglik: float
    moved: int


def _folds(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Two complementary masks over each annotator's pairs (alternate pairs): the cross-fitting folds."""
    odd = (torch.arange(mask.shape[1]) % 2).to(mask.dtype)
    return mask * (1 - odd), mask * odd


def crossfit_loglik(diff: Tensor, mask: Tensor, resp: Tensor, W: tuple[Tensor, Tensor]) -> Tensor:
    """[U, M] log p(D_i | u) with every pair scored by the heads fitted on the other fold (`W` = (fitted on fold 0,
    fitted on fold 1))."""
    f0, f1 = _folds(mask)
    return (user_log_likelihood(torch.einsum("upd,md->upm", diff, W[1]), f0)
            + user_log_likelihood(torch.einsum("upd,md->upm", diff, W[0]), f1))


def mixture_em(prefs: Preferences, *, clusters: int, assignment: str, iterations: int, restarts: int,
               seed: int) -> Mixture:
    """Algorithm 2 of `[EM-LLM] §8` from `restarts` random annotator splits (seeded by `seed`); the restart with the
    highest marginal log-likelihood wins. Hard: argmax E-step with equal priors (eq. 11); soft: posterior with learned
    priors. Each restart stops at a fixed point (no responsibility moves by 1e-3) or after `iterations`.

    Deviation: the E-step scores each pair with heads fitted on the other half of every annotator's pairs (two-fold
    cross-fitting). With a feature per vocabulary token and a few dozen pairs per annotator, an in-sample likelihood
    favours the cluster that was fitted on the annotator's own pairs, so every initial split is a fixed point (a pilot:
    purity stayed at the random split's 0.8 at every ridge penalty from 1e-3 to 0.1). The returned heads are fitted on
    all pairs with the final responsibilities."""
    diff, mask = prefs.w - prefs.l, prefs.mask
    U, folds = diff.shape[0], _folds(prefs.mask)
    rng = np.random.default_rng(stream_seed(seed, "groups/em"))
    best = None
    for _ in range(restarts):
        resp = torch.nn.functional.one_hot(torch.from_numpy(rng.integers(0, clusters, U)), clusters).to(diff.dtype)
        W = (torch.zeros(clusters, diff.shape[-1]), torch.zeros(clusters, diff.shape[-1]))
        log_mix, moved = None, U
        for _ in range(iterations):
            W = tuple(_fit(diff, f, resp, w0) for f, w0 in zip(folds, W))
            if assignment == "soft":
                log_mix = mixing_log_weights(resp)
            new, metrics = responsibilities(crossfit_loglik(diff, mask, resp, W), assignment=assignment, log_mix=log_mix)
            moved, change = int((new.argmax(1) != resp.argmax(1)).sum()), float((new - resp).abs().max())
            resp = new
            if change < 1e-3:  # a fixed point (hard: nobody moved)
                break
        marginal = float(metrics["mixture/loglik"])
        if best is None or marginal > best.loglik:
            best = Mixture(_fit(diff, mask, resp, (W[0] + W[1]) / 2, iters=100), resp, marginal, moved)
    return best


def match_components(resp: Tensor, group: Tensor) -> list[int]:
    """The component each group is matched to: the one holding most of its annotators' responsibility (distinct
    components when possible; ties by index)."""
    G, M = int(group.max()) + 1, resp.shape[1]
    table = torch.stack([resp[group == g].sum(0) for g in range(G)])  # [G, M]
    out, taken = [], set()
    for g in table.sum(1).argsort(descending=True).tolist():  # the largest group chooses first
        order = [m for m in table[g].argsort(descending=True).tolist() if m not in taken] or list(range(M))
        out.append((g, order[0]))
        taken.add(order[0])
    return [m for _, m in sorted(out)]


def mixture_report(prefs: Preferences, mix: Mixture) -> dict[str, float]:
    """Purity of the hard assignment against the true groups, each group's matched component's held-out accuracy on
    that group's annotators, and the marginal log-likelihood."""
    purity = float(cluster_purity(mix.resp.argmax(1), prefs.group))
    acc = accuracy(mix.W, prefs.heldout_w, prefs.heldout_l, prefs.heldout_mask)  # [M, U]
    out = {"purity": purity, "loglik": mix.loglik, "moved": float(mix.moved),
           "mass_min": float(mix.resp.mean(0).min())}
    for g, m in enumerate(match_components(mix.resp, prefs.group)):
        out[f"accuracy_g{g}"] = float(acc[m][prefs.group == g].mean())
    return out


def standardiser(W: Tensor, prefs: Preferences) -> tuple[Tensor, Tensor]:
    """(mean [M], std [M]) of each head's reward over the SFT model's training responses (both sides of every pair)."""
    r = prefs.pool @ W.T
    return r.mean(0), r.std(0).clamp_min(1e-6)


@dataclass
class LearnedRewards:
    """The reward heads the policy optimises, on raw (unstandardised) features: r [N, M] = ((ψ − mu)/sd)·Wᵀ, then
    standardised per head (`standardiser`)."""

    W: Tensor
    mu: Tensor
    sd: Tensor
    r_mean: Tensor
    r_std: Tensor

    def __call__(self, psi: Tensor) -> Tensor:
        dev = psi.device
        z = (psi - self.mu.to(dev)) / self.sd.to(dev)
        return (z @ self.W.to(dev).T - self.r_mean.to(dev)) / self.r_std.to(dev)


def learned_rewards(W: Tensor, prefs: Preferences) -> LearnedRewards:
    mean, std = standardiser(W, prefs)
    return LearnedRewards(W, prefs.mu, prefs.sd, mean, std)

