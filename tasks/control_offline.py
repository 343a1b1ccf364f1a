"""Offline accept/reject learning on a fixed dataset of mixed-quality dm_control episodes (`[PMPO] §5.3`, Table 1).

Source: `[PMPO] §5.3`: "we take a dataset of 140k episodes from a multi-task RL experiment
trained to convergence. We then train a value function on all data and use it to label the transitions in the
first 40k episodes as accept (positive advantage) or reject (negative advantage)... The KL part of the loss is
calculated on all 140k episodes." Table 1 compares BC, Accept+BC, Accept, Reject+BC and Accept+Reject+BC.

**The dataset** (`build_dataset`), one per (task, task config, dataset fields of `OfflineConfig`), in this order:
  1. `random_episodes` episodes of a uniform-random policy (bad data);
  2. every episode of a behaviour training run — the actor-critic loop (`tasks.control_ac`) with MPO and the
     `behaviour` config, one seed (`dataset_seed`) — in the order it collected them: the behaviour of its
     successive checkpoints, from near-random to its final skill (the analogue of the paper's RL experiment);
  3. `final_episodes` episodes of the behaviour run's final policy, sampling its actions (good data).
A value function V (an MLP on normalised observations) is fitted on *all* transitions by `value_rounds` rounds
of regression on λ-returns (λ = `value_lambda`, else `gae_lambda`) computed with the previous round's V (time-limit
truncations bootstrap from V of the final observation, terminations do not); GAE(γ, `gae_lambda`) advantages of the
fitted V label the transitions of `label_fraction` of the episodes (paper: 40k / 140k) accept (+1, advantage > 0) or
reject (−1, ≤ 0); the rest are unlabelled (0).
Which episodes (`labelled_episodes`, named by `label_episodes`): "leading" — the first ones in dataset order, as the
paper's "first 40k episodes"; "spread" — as many at evenly spaced ranks of the episode return, from the worst episode to
the best, so that the labelled subset spans the dataset's whole quality range (in this dataset's order the leading
episodes are the random policy's alone). The dataset is stored as an artifact, keyed by the hash of everything that
defines it: `<results>/artifacts/<key>/dataset.pt` and `meta.json` (episode returns, each episode's source, the
labelled episodes, accept fraction, ...),
written to a temporary folder and renamed into place (atomic), under a file lock so that concurrent workers
build it once; later runs load it. `<results>` is the environment variable `EMRL_RESULTS`, which the CLI sets
to its `--results` store (the runner hands train functions only run specs), else `results` (relative to the
working directory). `OfflineConfig.device` builds the dataset too (the behaviour run and V's fit run there; the
artifact holds CPU tensors), so a dataset built on CUDA is keyed apart from the CPU one.

**The learner** (`train`, the `OfflineConfig` loop): S seeds of a policy trained in lockstep for `steps`
gradient steps. Each step samples `batch_size` transitions per seed from the set `learn_on` names ("labelled":
the labelled subset, with their labels; "all": every transition) into `Batch.logp`/`label`/`score`
(`score` = the GAE advantage), and another `batch_size` from *all* transitions into `Batch.kl_ref`
= −log π_θ(a|s): the sample estimate of KL(π_data ‖ π_θ) up to the data's entropy, i.e. the BC term ("the KL
part of the loss is calculated on all episodes"). So, with `algorithms/pmpo.py`'s loss
J = α E_accept[log π] − (1−α) E_reject[log π] − β KL:
    BC               = `sft` on learn_on="all"
    Accept           = pmpo α=1, β=0          Accept+BC        = pmpo α=1,   β=2
    Reject+BC        = pmpo α=0, β=2          Accept+Reject+BC = pmpo α=0.5, β=1
(every "+BC" variant weighs the BC term 2× each signal term; β = 2 > 1 − α keeps reject-only bounded, `[PMPO] §3.2`).
With one action per state, PMPO's per-state expectations become means over the minibatch in which states
without an accepted (rejected) action contribute 0 (`pmpo_loss`'s convention).

Logged rows: at step 0 `data/*` (dataset summary: return of each source, accept fraction, size; and, measured per
episode against the learner's `bad_return`, `data/bad_episode_fraction` — the share of episodes whose return is below
it, the paper's "significant amount of bad episodes" — `data/labelled_bad_fraction`, the labelled episodes' lowest
and highest return and the dataset's lowest, median and highest: `episode_rows`); every
`log_every` steps the means of the algorithm's metrics; `eval/return` every `eval_every` gradient steps and at
the end (deterministic policy, `eval_episodes` episodes, "eval" stream). A non-finite loss or parameter marks
the seed diverged. Seeds: the dataset has its own (`dataset_seed`), shared by every run; a run's seed drives
its network initialisation ("run/init"), minibatches ("run") and evaluation ("eval").

Deviations from `[PMPO] §5.3`: cartpole-scale state-based control instead of RGB Stacking from pixels; a dataset
of tens to hundreds of episodes (uniform-random ones and one short single-task run) instead of 140k episodes of a
multi-task run; the labelled episodes may be spread over the return ranks instead of leading (`label_episodes`);
the value function is V(s) with GAE advantages (the paper does not give its estimator); β is not given by the
paper for Table 1 (ours above).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.func import functional_call, vmap

from algorithms import REGISTRY as ALGORITHMS
from algorithms.advantages import gae
from algorithms.base import Batch, Needs
from algorithms.config import ConfigError, check_choices, check_positive, check_range, field
from algorithms.mpo import MPOConfig
from tasks.base import Device, RunResult, RunSpec
from tasks.control_ac import ActorCriticConfig
from tasks.control_ac import _train_group as train_actor_critic
from tasks.dmc import (PolicyConfig, RunningNorm, SeedStatus, Stacked, VecEnv, evaluate_seeds, make_policy, mlp, register_loop,
                       seed_generators)
from tasks.seeding import generator, stream_seed

BEHAVIOUR_DEFAULT = ActorCriticConfig(total_steps=100_000, eval_every=100_000, eval_episodes=1, log_every=100_000)


@dataclass(frozen=True)
class OfflineConfig:
    """The offline accept/reject loop (`[PMPO] §5.3`): a dataset definition and the offline learner."""

    # ---- the learner
    steps: int = field(20_000, "gradient steps of the offline learner (the paper does not give them)")
    batch_size: int = field(256, "transitions per gradient step for the signal terms, and as many again for the BC/KL term")
    lr: float = field(3e-4, "Adam learning rate of the policy (and of duals, if any)")
    policy: Literal["gaussian", "binned"] = field("gaussian", "action distribution of the learned policy")
    hidden: tuple[int, ...] = field((256, 256), "hidden sizes of the policy MLP")
    bins: int = field(11, "bins per action dimension for policy='binned'")
    learn_on: Literal["labelled", "all"] = field(
        "labelled", "transitions that fill Batch.logp/label: the labelled subset (PMPO pieces) or all of them (BC with sft)")
    eval_every: int = field(10_000, "gradient steps between evaluations (and one at the end)")
    eval_episodes: int = field(10, "deterministic evaluation episodes per evaluation; [PMPO] §5.3 Table 1: 100")
    log_every: int = field(1_000, "gradient steps between logged means of the algorithm's metrics")
    bad_return: float = field(
        100.0, "an episode whose return is below this counts as bad in the logged data/bad_episode_fraction (a diagnostic of "
               "the dataset; the paper does not define 'bad episodes' by a number)")
    # ---- the dataset (these fields, the task and its config are the artifact's key: `dataset_key`)
    behaviour: ActorCriticConfig = field(BEHAVIOUR_DEFAULT, "the behaviour run (MPO, one seed) whose episodes form the dataset's middle")
    random_episodes: int = field(20, "episodes of a uniform-random policy at the start of the dataset")
    final_episodes: int = field(20, "episodes of the behaviour run's final (stochastic) policy at the end of the dataset")
    label_fraction: float = field(40 / 140, "fraction of the episodes labelled accept/reject; paper: 40k of 140k")
    label_episodes: Literal["leading", "spread"] = field(
        "leading", "which episodes are labelled: 'leading', the first in dataset order (the paper's 'first 40k episodes'); "
                   "'spread', at evenly spaced ranks of their return, worst to best (`labelled_episodes`)")
    dataset_seed: int = field(0, "seed of the dataset (behaviour run, random and final episodes); shared by every run")
    gamma: float = field(0.99, "discount of the value function and the advantages")
    gae_lambda: float = field(0.95, "λ of the GAE advantages that label the transitions")
    value_lambda: float | None = field(
        None, "λ of the value function's regression targets (λ-returns bootstrapped from the previous round's V). None: "
              "gae_lambda, whose rounds each carry value only ≈ 1/(1 − γλ) steps back, so over 1000-step episodes V stays "
              "biased low and most advantages come out positive; 1.0: Monte-Carlo returns, bootstrapped only at time-limit "
              "truncations, the data's own value after one round (later rounds refine the truncation bootstrap)")
    value_rounds: int = field(3, "rounds of (λ-returns with the current V, then regression of V on them)")
    value_epochs: int = field(3, "passes over all transitions per value round (minibatches of 256, Adam lr 1e-3)")
    value_hidden: tuple[int, ...] = field((256, 256), "hidden sizes of the value function's MLP")
    # ---- where both run (the dataset's key holds it unless it is the CPU)
    device: Device = field("cpu", "where the loop keeps networks, the dataset's tensors and losses ('cpu' or 'cuda'), for the "
                           "learner and for building the dataset (its behaviour run too); the runner picks which GPU")

    def __post_init__(self):
        check_choices(self)
        check_positive(self, "steps", "batch_size", "lr", "bins", "eval_every", "eval_episodes", "log_every",
                       "value_rounds", "value_epochs")
        check_positive(self, "random_episodes", "final_episodes", strict=False)
        check_range(self, "label_fraction", 0.0, 1.0, lo_open=True)
        if not np.isfinite(self.bad_return):
            raise ConfigError(f"OfflineConfig.bad_return = {self.bad_return!r} is invalid: must be a finite return.")
        check_range(self, "gamma", 0.0, 1.0)
        check_range(self, "gae_lambda", 0.0, 1.0)
        if self.value_lambda is not None:
            check_range(self, "value_lambda", 0.0, 1.0)
        if self.bins < 2:
            raise ConfigError(f"OfflineConfig.bins = {self.bins} is invalid: must be >= 2.")
        for name in ("hidden", "value_hidden"):
            sizes = getattr(self, name)
            if not sizes or any(h < 1 for h in sizes):
                raise ConfigError(f"OfflineConfig.{name} = {sizes!r} is invalid: must be non-empty positive sizes.")
        if not isinstance(self.behaviour, ActorCriticConfig):
            raise ConfigError(f"OfflineConfig.behaviour must be an ActorCriticConfig, got {type(self.behaviour).__name__}.")
        if self.behaviour.num_envs != 1:
            raise ConfigError("OfflineConfig.behaviour.num_envs must be 1 (the dataset keeps each episode contiguous).")
        if self.behaviour.device != "cpu":
            raise ConfigError(f"OfflineConfig.behaviour.device = {self.behaviour.device!r} is invalid: the behaviour run trains on "
                              "OfflineConfig.device (set that one); allowed: 'cpu', the default.")

    @property
    def dataset_fields(self) -> tuple[str, ...]:
        return ("behaviour", "random_episodes", "final_episodes", "label_fraction", "label_episodes", "dataset_seed", "gamma",
                "gae_lambda", "value_lambda", "value_rounds", "value_epochs", "value_hidden")


PROVIDES = Needs(min_samples=1, labels=True, kl_ref=True)
"""One action per state with its label, and the sample-based KL to the data (the BC term)."""


# ------------------------------------------------------------------------------------------------ the artifact


def results_root() -> Path:
    """The results store the artifacts live under: `$EMRL_RESULTS`, else `results` (relative to the working directory)."""
    return Path(os.environ.get("EMRL_RESULTS", "results"))


def dataset_key(task: str, task_config, cfg: OfflineConfig) -> str:
    """16-hex-digit hash of everything that defines the dataset (the artifact's folder name).

    The device it is built on is part of it, except the CPU: datasets built before the loops had a device were built on
    the CPU and keep their keys. Likewise `label_episodes` is part of it except at "leading", the only choice before it
    existed (same code, same labels), and `value_lambda` except at None. (The behaviour config's own device is always
    "cpu": it trains on `cfg.device`.)"""
    behaviour = {k: v for k, v in asdict(cfg.behaviour).items() if k != "device"}
    unchanged = {"label_episodes": "leading", "value_lambda": None}  # the behaviour before the field existed: old keys kept
    fields = [name for name in cfg.dataset_fields if name not in unchanged or getattr(cfg, name) != unchanged[name]]
    payload = {"kind": "offline-accept-reject-dataset", "version": 1, "task": task, "task_config": asdict(task_config),
               **{name: (behaviour if name == "behaviour" else getattr(cfg, name)) for name in fields},
               **({"device": cfg.device} if cfg.device != "cpu" else {})}
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


BUILDS: list[str] = []
"""Keys of the datasets built by this process (the tests check that a second call reuses the artifact)."""


def load_or_build(task: str, task_config, cfg: OfflineConfig, root: Path | None = None) -> tuple[dict, Path]:
    """The dataset for (task, config): loaded from `<root>/artifacts/<key>/` or built there once (locked, atomic)."""
    root = results_root() if root is None else Path(root)
    key = dataset_key(task, task_config, cfg)
    arts = root / "artifacts"
    arts.mkdir(parents=True, exist_ok=True)
    final = arts / key
    with open(arts / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent worker waits here until the first one has built it
        if not (final / "dataset.pt").exists():
            data, meta = build_dataset(task, task_config, cfg)
            tmp = Path(tempfile.mkdtemp(dir=arts, prefix=f".tmp-{key}-"))
            try:
                torch.save(data, tmp / "dataset.pt")
                (tmp / "meta.json").write_text(json.dumps({"key": key, "task": task, **meta}, indent=1, sort_keys=True))
                for p in tmp.iterdir():
                    os.chmod(p, 0o644)
                os.chmod(tmp, 0o755)
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            BUILDS.append(key)
    return torch.load(final / "dataset.pt"), final


def _collect(task: str, task_config, act, seeds: list[int]) -> list[dict[str, Tensor]]:
    """The first episode of each of len(seeds) environments stepped in lockstep; `act(obs [N, O]) -> actions [N, A]`."""
    env = VecEnv(task, seeds, task_config.action_repeat, task_config.time_limit)
    n = env.n
    steps: list[dict[str, np.ndarray]] = []
    done = np.zeros(n, dtype=bool)
    length = np.zeros(n, dtype=np.int64)
    while not done.all():
        obs = env.obs.copy()
        action = np.clip(act(obs), -1.0, 1.0).astype(np.float32)
        _, reward, term, trunc, final_obs, _ = env.step(action)
        steps.append(dict(obs=obs, action=action, reward=reward, terminated=term, truncated=trunc, next_obs=final_obs,
                          live=~done))
        length += ~done
        done |= term | trunc
    out = []
    for i in range(n):
        t = int(length[i])
        ep = {k: torch.as_tensor(np.stack([s[k][i] for s in steps[:t]]), device="cpu") for k in ("obs", "action", "reward", "next_obs")}
        ep["terminated"] = torch.as_tensor(np.array([s["terminated"][i] for s in steps[:t]]), dtype=torch.float32, device="cpu")
        ep["truncated"] = torch.as_tensor(np.array([s["truncated"][i] for s in steps[:t]]), dtype=torch.float32, device="cpu")
        out.append(ep)
    return out


def _replay_episodes(replay) -> list[dict[str, Tensor]]:
    """The episodes of a single-seed, single-env replay buffer in insertion order (no wrap-around), on the CPU; the last,
    if cut by the end of training, is marked truncated at its last step (it bootstraps from V of its next observation)."""
    n = replay.size
    if replay.size == replay.capacity and replay.ptr != 0:
        raise ValueError("the behaviour run's replay wrapped around; raise its replay_size above total_steps")
    buf = {k: getattr(replay, k)[0, :n].cpu() for k in ("obs", "action", "reward", "next_obs", "terminated", "ended")}
    ends = torch.nonzero(buf["ended"].bool()).flatten().tolist()
    if not ends or ends[-1] != n - 1:
        ends.append(n - 1)
    out, start = [], 0
    for e in ends:
        sl = slice(start, e + 1)
        term = buf["terminated"][sl].clone()
        trunc = (buf["ended"][sl] - term).clamp_min(0.0)
        trunc[-1] = 1.0 - term[-1]
        out.append(dict(obs=buf["obs"][sl].clone(), action=buf["action"][sl].clone(), reward=buf["reward"][sl].clone(),
                        next_obs=buf["next_obs"][sl].clone(), terminated=term, truncated=trunc))
        start = e + 1
    return out


def build_dataset(task: str, task_config, cfg: OfflineConfig) -> tuple[dict, dict]:
    """Collect the episodes, fit V, label the leading episodes, on `cfg.device`. Returns (tensors on the CPU, meta)."""
    seed = cfg.dataset_seed
    dev = torch.device(cfg.device)
    probe = VecEnv(task, [0], task_config.action_repeat, task_config.time_limit)
    act_dim = probe.action_dim
    rand_gen = np.random.default_rng(stream_seed(seed, "dataset/random"))
    random_eps = _collect(task, task_config, lambda o: rand_gen.uniform(-1, 1, (o.shape[0], act_dim)),
                          [stream_seed(seed, f"dataset/random/{i}") for i in range(cfg.random_episodes)]) if cfg.random_episodes else []
    # the behaviour run: the actor-critic loop with MPO, one seed
    from tasks.base import RunSpec as _Spec

    keep: dict = {}
    behaviour = train_actor_critic([_Spec(task, task_config, "mpo", MPOConfig(), replace(cfg.behaviour, device=cfg.device),
                                          stream_seed(seed, "dataset/behaviour"))], keep=keep)[0]
    if behaviour.status != "ok":
        raise RuntimeError(f"the dataset's behaviour run did not finish: {behaviour.status} {behaviour.diverged}")
    run_eps = _replay_episodes(keep["replay"])
    actor, norm = keep["actor"], keep["norm"]
    policy = actor.module_of(0)
    run_norm = norm.to_running_norm(0) if norm is not None else None
    final_gen = generator(seed, "dataset/final", dev)

    @torch.no_grad()
    def final_act(o: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(o, device=dev)
        x = run_norm(x) if run_norm is not None else x
        return policy.sample(policy(x), generator=final_gen).cpu().numpy()

    final_eps = _collect(task, task_config, final_act, [stream_seed(seed, f"dataset/final/{i}") for i in range(cfg.final_episodes)]) \
        if cfg.final_episodes else []
    episodes = random_eps + run_eps + final_eps
    source = [0] * len(random_eps) + [1] * len(run_eps) + [2] * len(final_eps)
    data = _pack(episodes, source)
    meta = _label(data, cfg, seed)
    meta.update(_summary(data, episodes, source))
    return data, meta


def _pack(episodes: list[dict[str, Tensor]], source: list[int]) -> dict[str, Tensor]:
    lengths = [len(ep["reward"]) for ep in episodes]
    data = {k: torch.cat([ep[k] for ep in episodes]).float() for k in ("obs", "action", "reward", "next_obs", "terminated", "truncated")}
    data["episode"] = torch.repeat_interleave(torch.arange(len(episodes), device="cpu"), torch.tensor(lengths, device="cpu"))
    data["source"] = torch.tensor(source, device="cpu")
    data["episode_return"] = torch.tensor([float(ep["reward"].sum()) for ep in episodes], device="cpu")
    data["obs_mean"] = data["obs"].mean(0)
    data["obs_std"] = data["obs"].std(0).clamp_min(1e-3)
    return data


def _padded(x: Tensor, episode: Tensor, n_ep: int, t_max: int, fill: float = 0.0) -> Tensor:
    """Flat per-transition values -> [episodes, t_max] (time within the episode), padded with `fill`."""
    starts = torch.zeros(n_ep, dtype=torch.long, device=episode.device)
    counts = torch.bincount(episode, minlength=n_ep)
    starts[1:] = torch.cumsum(counts, 0)[:-1]
    pos = torch.arange(len(episode), device=episode.device) - starts[episode]
    out = torch.full((n_ep, t_max), fill, dtype=x.dtype, device=x.device)
    out[episode, pos] = x
    return out, pos


VALUE_BATCH = 256


def _label(data: dict[str, Tensor], cfg: OfflineConfig, seed: int) -> dict:
    """Fit V on every transition (GAE λ-returns, `value_rounds` rounds) on `cfg.device` and label the leading episodes
    in place (CPU tensors in and out)."""
    dev = torch.device(cfg.device)
    obs_n = ((data["obs"] - data["obs_mean"]) / data["obs_std"]).to(dev)
    next_n = ((data["next_obs"] - data["obs_mean"]) / data["obs_std"]).to(dev)
    g = generator(seed, "dataset/value", dev)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(stream_seed(seed, "dataset/value/init"))  # the CPU's only (see tasks.dmc.Stacked)
        value = mlp([obs_n.shape[1], *cfg.value_hidden, 1], out_gain=1.0).to(dev)
    opt = torch.optim.Adam(value.parameters(), lr=1e-3)
    episode = data["episode"].to(dev)
    n_ep = int(episode.max()) + 1
    t_max = int(torch.bincount(episode).max())
    pad = lambda x: _padded(x.to(dev), episode, n_ep, t_max)[0]  # noqa: E731
    _, pos = _padded(data["reward"].to(dev), episode, n_ep, t_max)
    reward, term, trunc = pad(data["reward"]), pad(data["terminated"]), pad(data["truncated"])
    n = len(episode)
    for _ in range(cfg.value_rounds):
        with torch.no_grad():
            v, nv = value(obs_n).squeeze(-1), value(next_n).squeeze(-1)
            lam = cfg.gae_lambda if cfg.value_lambda is None else cfg.value_lambda
            _, ret = gae(reward, pad(v), pad(nv), term, trunc, gamma=cfg.gamma, lam=lam)
            target = ret[episode, pos]
        for _ in range(cfg.value_epochs):
            perm = torch.randperm(n, generator=g, device=dev)
            for idx in perm.split(VALUE_BATCH):
                loss = (value(obs_n[idx]).squeeze(-1) - target[idx]).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
    with torch.no_grad():
        v, nv = value(obs_n).squeeze(-1), value(next_n).squeeze(-1)
        adv, ret = gae(reward, pad(v), pad(nv), term, trunc, gamma=cfg.gamma, lam=cfg.gae_lambda)
        adv = adv[episode, pos]
        explained = 1.0 - float((ret[episode, pos] - v).var() / ret[episode, pos].var().clamp_min(1e-8))
    chosen = labelled_episodes(data["episode_return"], cfg.label_fraction, cfg.label_episodes).to(dev)
    labelled = torch.isin(episode, chosen)
    label = torch.where(labelled, torch.where(adv > 0, 1.0, -1.0), torch.zeros_like(adv))
    data["advantage"], data["label"] = adv.cpu(), label.cpu()
    return {"labelled_episodes": len(chosen), "labelled_episode_ids": chosen.cpu().tolist(),
            "labelled_transitions": int(labelled.sum()), "accept_fraction": float((label > 0).sum() / labelled.sum()),
            "value_explained_variance": explained}


def labelled_episodes(episode_return: Tensor, fraction: float, mode: str) -> Tensor:
    """The indices (ascending) of the max(1, round(fraction × n)) labelled episodes of n with returns `episode_return` [n].

    "leading": the first ones (`[PMPO] §5.3`: "the first 40k episodes"). "spread": the episodes at ranks
    floor((n − 1) i / (k − 1) + ½), i = 0 … k − 1, of the returns sorted ascending (ties: the lower index first), i.e. the
    worst, the best and evenly spaced ranks between (k = 1: the median rank); ranks ≥ 1 apart, so k distinct episodes."""
    n = len(episode_return)
    k = max(1, round(fraction * n))
    if mode == "leading":
        return torch.arange(k, device=episode_return.device)
    if mode != "spread":
        raise ValueError(f"label_episodes must be 'leading' or 'spread', got {mode!r}")
    order = torch.sort(episode_return, stable=True).indices
    ranks = torch.floor(torch.linspace(0, n - 1, k, dtype=torch.float64) + 0.5).long() if k > 1 else torch.tensor([(n - 1) // 2])
    return torch.sort(order[ranks.to(order.device)]).values


def _summary(data: dict[str, Tensor], episodes, source) -> dict:
    ret = data["episode_return"]
    src = torch.tensor(source, device="cpu")
    out = {"episodes": len(episodes), "transitions": int(len(data["reward"])),
           "episode_returns": [round(float(x), 3) for x in ret], "episode_sources": [int(x) for x in src]}
    for i, name in enumerate(("random", "behaviour_run", "final_policy")):
        sel = ret[src == i]
        out[f"{name}_episodes"] = int(len(sel))
        out[f"{name}_return_mean"] = float(sel.mean()) if len(sel) else float("nan")
    return out


# ------------------------------------------------------------------------------------------------ the learner


def train(specs: list[RunSpec]) -> list[RunResult]:
    """Train runs that differ only in seed on the (shared) dataset, vectorised over seeds."""
    spec0 = specs[0]
    cfg: OfflineConfig = spec0.train_config
    cls = ALGORITHMS[spec0.algo]
    missing = cls.needs_for(spec0.algo_config).missing(PROVIDES)
    if missing:
        raise ConfigError(f"algorithm {spec0.algo!r} needs {', '.join(missing)}, which the offline loop does not provide.")
    data, path = load_or_build(spec0.task, spec0.task_config, cfg)
    meta = json.loads((path / "meta.json").read_text())
    return _learn(specs, data, meta)


DATA_ROWS = ("random_return_mean", "behaviour_run_return_mean", "final_policy_return_mean", "accept_fraction", "episodes",
             "transitions", "labelled_transitions", "value_explained_variance")


def episode_rows(data: dict[str, Tensor], bad_return: float) -> dict[str, float]:
    """Per-episode facts of the dataset, from its tensors (so that artifacts built before they were logged give them too):
    `bad_episode_fraction` = share of episodes with return < `bad_return` (and `bad_return` itself),
    `labelled_bad_fraction` the same among the labelled episodes, the labelled episodes' lowest and highest return
    (`labelled_return_min`, `labelled_return_max`) and the dataset's `return_min`, `return_median`, `return_max`."""
    ret = data["episode_return"].double()
    chosen = torch.unique(data["episode"][data["label"] != 0])
    lab = ret[chosen]
    return {"bad_return": float(bad_return), "bad_episode_fraction": float((ret < bad_return).double().mean()),
            "labelled_bad_fraction": float((lab < bad_return).double().mean()) if len(lab) else float("nan"),
            "labelled_return_min": float(lab.min()) if len(lab) else float("nan"),
            "labelled_return_max": float(lab.max()) if len(lab) else float("nan"),
            "return_min": float(ret.min()), "return_median": float(ret.median()), "return_max": float(ret.max())}


def _learn(specs: list[RunSpec], data: dict, meta: dict) -> list[RunResult]:
    spec0 = specs[0]
    cfg: OfflineConfig = spec0.train_config
    task_cfg = spec0.task_config
    seeds = [s.seed for s in specs]
    S = len(seeds)
    dev = torch.device(cfg.device)
    obs_dim, act_dim = data["obs"].shape[1], data["action"].shape[1]
    pcfg = PolicyConfig(kind=cfg.policy, hidden=tuple(cfg.hidden), bins=cfg.bins, state_dependent_std=True, init_log_std=0.0)
    actor = Stacked(lambda: make_policy(obs_dim, act_dim, pcfg), seeds, dev)
    pol = actor.template
    gens = seed_generators(seeds, "run", dev)
    obs_n = ((data["obs"] - data["obs_mean"]) / data["obs_std"]).clamp(-10.0, 10.0).to(dev)
    action, label, adv = (data[k].to(dev) for k in ("action", "label", "advantage"))
    labelled = torch.nonzero(label != 0).flatten()
    pool = labelled if cfg.learn_on == "labelled" else torch.arange(len(label), device=dev)
    method = ALGORITHMS[spec0.algo](spec0.algo_config).to(dev)
    duals = {k: v.detach()[None].repeat(S, *([1] * v.dim())).requires_grad_() for k, v in method.named_parameters()}
    params = list(actor.params.values())
    opt = torch.optim.Adam(params, lr=cfg.lr)
    dual_opt = torch.optim.Adam(list(duals.values()), lr=cfg.lr) if duals else None
    mask = torch.ones(cfg.batch_size, 1, device=dev)
    norm = RunningNorm(obs_dim, clip=10.0, eps=0.0).to(dev)
    norm.mean.copy_(data["obs_mean"].double())
    norm.var.copy_(data["obs_std"].double() ** 2)

    def method_loss(dp, t):
        batch = Batch(logp=t["logp"][:, None], score=t["adv"][:, None], mask=mask, label=t["label"][:, None], kl_ref=t["kl"])
        loss, metrics = functional_call(method, dp, (batch,)) if dp else method(batch)
        return loss, {k: m.detach().float().reshape(()) for k, m in metrics.items()}

    vmapped = vmap(method_loss)
    facts = {**{k: float(meta[k]) for k in DATA_ROWS if k in meta}, **episode_rows(data, cfg.bad_return)}
    rows: list[list[tuple[int, str, float]]] = [[(0, f"data/{k}", v) for k, v in facts.items()] for _ in seeds]
    status = SeedStatus(S, dev)
    alive = status.alive  # updated in place by status.kill
    window: list[Tensor] = []
    keys: list[str] = []
    for step in range(1, cfg.steps + 1):
        i_sig = pool[torch.stack([torch.randint(len(pool), (cfg.batch_size,), generator=g, device=dev) for g in gens])]  # [S, B]
        i_all = torch.stack([torch.randint(len(label), (cfg.batch_size,), generator=g, device=dev) for g in gens])
        p_sig = actor.forward(actor.params, obs_n[i_sig])
        p_all = actor.forward(actor.params, obs_n[i_all])
        t = {"logp": pol.log_prob(p_sig, action[i_sig]), "label": label[i_sig], "adv": adv[i_sig],
             "kl": -pol.log_prob(p_all, action[i_all])}
        loss, metrics = vmapped(duals, t)
        bad = ~torch.isfinite(loss)
        if bool((bad & alive).any()):
            status.kill(bad, "non-finite loss", step)
            if not alive.any():
                break
        opt.zero_grad(set_to_none=True)
        if dual_opt:
            dual_opt.zero_grad(set_to_none=True)
        torch.where(alive, loss, torch.zeros_like(loss)).sum().backward()
        for p in params + list(duals.values()):
            if p.grad is not None:
                p.grad.mul_(alive.reshape(-1, *([1] * (p.dim() - 1))).to(p.dtype)).nan_to_num_(0.0)
        opt.step()
        if dual_opt:
            dual_opt.step()
        metrics = {**metrics, "loss/total": loss.detach(), "policy/bc_nll": t["kl"].detach().mean(1)}
        if not keys:
            keys = list(metrics)
        window.append(torch.stack([metrics[k].float() for k in keys]))
        evaluate_now = step % cfg.eval_every == 0 or step == cfg.steps
        if step % cfg.log_every == 0 or evaluate_now:
            with torch.no_grad():
                finite = torch.stack([torch.isfinite(p.reshape(S, -1)).all(1) for p in params]).all(0)
            status.kill(~finite, "non-finite parameters", step)
            means = torch.stack(window).mean(0).cpu()  # to the CPU once per window
            window.clear()
            if evaluate_now:
                returns = evaluate_seeds(actor, norm, spec0.task, cfg.eval_episodes, seeds, alive.clone(), task_cfg.action_repeat,
                                         task_cfg.time_limit)
            for s, live in enumerate(alive.tolist()):
                if not live:
                    continue
                rows[s].extend((step, k, float(v)) for k, v in zip(keys, means[:, s].tolist()))
                if evaluate_now:
                    rows[s].append((step, "eval/return", returns[s]))
            if not alive.any():
                break
    return status.results(rows)


register_loop(OfflineConfig, provides=PROVIDES, train=train)
