"""The LM family's model artifacts (`tasks/lm/models.py`) at tiny sizes: every stage saves and loads with the same
logits, the same config gives the same weights and is read from the cache the second time, an interrupted build
leaves nothing that counts as an artifact, dropout overrides reach the config, the SFT labels mask the prompt,
right-packing, the learning-rate schedule and the Bradley–Terry loss by hand, and config validation."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from algorithms.config import ConfigError
from tasks.lm import language as lang
from tasks.lm import models as lm_models
from tasks.lm.models import (ModelConfig, PretrainConfig, RewardModelConfig, SFTStageConfig, artifact_key,
                             artifacts_root, bradley_terry_loss, collate, load_causal_lm, load_reward_model,
                             lr_factor, pack_right, pretrain_example, pretrained, read_metadata, reward_model,
                             reward_scores, sft_example, sft_model)
from tasks.lm.tokens import encode_prompts

TINY_MODEL = ModelConfig(n_layer=1, n_head=2, n_embd=32, n_positions=40)
# ~1 s per stage on one thread; the tiny SFT model's samples are ~80% grammatical, so gold ties are rare enough
TINY_PRE = PretrainConfig(model=TINY_MODEL, documents=500, steps=100, batch_size=16, lr=1e-2)
TINY_SFT = SFTStageConfig(pretrain=TINY_PRE, pairs=300, steps=60, batch_size=16, lr=1e-2, eval_prompts=16)
TINY_RM = RewardModelConfig(sft=TINY_SFT, model=TINY_MODEL, pairs=20, steps=12, batch_size=8)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One artifact root for the module (the tiny stages are built once and shared)."""
    root = tmp_path_factory.mktemp("artifacts")
    mp = pytest.MonkeyPatch()
    mp.setenv("EMRL_ARTIFACTS", str(root))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield root
    torch.set_num_threads(n)
    mp.undo()


@pytest.fixture(autouse=True)
def _env(store, monkeypatch):
    monkeypatch.setenv("EMRL_ARTIFACTS", str(store))


def as_json(cfg) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def batch(tokenizer, n=6, seed=0):
    prompts = lang.prompts(lang.LanguageConfig(), "heldout", n, seed)
    responses = [r + " [EOS]" for _, r in lang.sft_pairs(lang.LanguageConfig(), n, seed)]
    return prompts, responses


# ------------------------------------------------------------------------------------------------ examples


def test_sft_example_masks_bos_and_prompt():
    tok = lang.build_tokenizer()
    ids, labels = sft_example(tok, "the cat sees a dog .", "a good cat likes the fox .")
    words = ["[BOS]", *"the cat sees a dog .".split(), *"a good cat likes the fox .".split(), "[EOS]"]
    assert ids == [lang.VOCAB.index(w) for w in words]
    # [BOS] + 6 prompt words are not predicted; the 7 response words and [EOS] are
    assert labels == [-100] * 7 + ids[7:] and len(labels) == len(ids) == 15
    data = collate([(ids, labels), pretrain_example(tok, "a cat sees the dog .", 40)], tok.pad_token_id)
    assert data["input_ids"].shape == (2, 15) and data["attention_mask"][1].tolist() == [1] * 8 + [0] * 7
    assert data["labels"][1].tolist() == data["input_ids"][1, :8].tolist() + [-100] * 7
    assert (data["input_ids"][1, 8:] == tok.pad_token_id).all()


def test_pretrain_example_wraps_and_truncates():
    tok = lang.build_tokenizer()
    ids, labels = pretrain_example(tok, "a cat sees the dog . the dog sees a cat .", 40)
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and len(ids) == 14 and labels == ids
    assert pretrain_example(tok, "a cat sees the dog . the dog sees a cat .", 5)[0] == ids[:5]


def test_pack_right_moves_real_tokens_left_in_order():
    pad = 0
    prompt_ids = torch.tensor([[0, 0, 1, 5, 6], [1, 7, 8, 9, 10]])
    prompt_mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.float)
    response_ids = torch.tensor([[11, 2, 0], [12, 13, 14]])
    response_mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.float)
    ids, mask = pack_right(prompt_ids, prompt_mask, response_ids, response_mask, pad)
    assert ids.tolist() == [[1, 5, 6, 11, 2, 0, 0, 0], [1, 7, 8, 9, 10, 12, 13, 14]]
    assert mask.tolist() == [[1, 1, 1, 1, 1, 0, 0, 0], [1] * 8]


def test_lr_schedule_by_hand():
    # 10 steps, warmup 0.2 -> 2 warmup steps: 1/2, 2/2, then cosine over the 8 remaining steps from 1 towards 0
    f = [lr_factor(s, 10, 0.2) for s in range(10)]
    assert f[:3] == [0.5, 1.0, 1.0]
    assert f[3] == pytest.approx(0.5 * (1 + math.cos(math.pi / 8)))
    assert f[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert lr_factor(0, 10, 0.0) == 1.0


def test_bradley_terry_loss_by_hand():
    rw, rl = torch.tensor([2.0, 0.0], requires_grad=True), torch.tensor([1.0, 1.0])
    loss, m = bradley_terry_loss(rw, rl)
    # -(log σ(1) + log σ(-1)) / 2 = (log(1 + e^-1) + log(1 + e)) / 2
    assert loss.item() == pytest.approx((math.log1p(math.exp(-1)) + math.log1p(math.e)) / 2)
    assert float(m["rm/accuracy"]) == 0.5 and float(m["rm/margin"]) == 0.0
    (g,) = torch.autograd.grad(loss, rw)  # noqa
    # d/dr_w of -log σ(d)/N is -(1 - σ(d))/N = -σ(-d)/N
    torch.testing.assert_close(g, -torch.sigmoid(torch.tensor([-1.0, 1.0])) / 2)


# ------------------------------------------------------------------------------------------------ configs and keys


@pytest.mark.parametrize("make, field", [
    (lambda: ModelConfig(n_embd=30, n_head=4), "ModelConfig.n_embd"),
    (lambda: ModelConfig(dropout=1.0), "ModelConfig.dropout"),
    (lambda: ModelConfig(n_layer=0), "ModelConfig.n_layer"),
    (lambda: ModelConfig(activation="relu"), "ModelConfig.activation"),
    (lambda: PretrainConfig(steps=0), "PretrainConfig.steps"),
    (lambda: PretrainConfig(lr=-1.0), "PretrainConfig.lr"),
    (lambda: PretrainConfig(batch_size=2.5), "PretrainConfig.batch_size"),
    (lambda: SFTStageConfig(warmup=1.0), "SFTStageConfig.warmup"),
    (lambda: SFTStageConfig(adam_beta2=1.0), "SFTStageConfig.adam_beta2"),
    (lambda: SFTStageConfig(pretrain=PretrainConfig(model=ModelConfig(n_positions=20))), "n_positions"),
    (lambda: RewardModelConfig(temperature=0.0), "RewardModelConfig.temperature"),
    (lambda: RewardModelConfig(init="warm"), "RewardModelConfig.init"),
    (lambda: RewardModelConfig(model=TINY_MODEL), "RewardModelConfig.model"),
    (lambda: RewardModelConfig(max_new_tokens=40), "RewardModelConfig.max_new_tokens"),
    (lambda: RewardModelConfig(heldout_fraction=0.0), "RewardModelConfig.heldout_fraction"),
])
def test_config_validation(make, field):
    with pytest.raises(ConfigError, match=field):
        make()


def test_artifact_key_is_kind_and_config_hash(store):
    assert artifact_key(TINY_PRE).startswith("pretrain-") and len(artifact_key(TINY_PRE)) == len("pretrain-") + 16
    assert artifact_key(TINY_SFT).startswith("sft-") and artifact_key(TINY_RM).startswith("rm-")
    assert artifact_key(TINY_PRE) == artifact_key(dataclasses.replace(TINY_PRE))
    assert artifact_key(TINY_PRE) != artifact_key(dataclasses.replace(TINY_PRE, seed=1))
    assert artifacts_root() == store
    with pytest.raises(ConfigError):
        artifact_key(TINY_MODEL)


def test_gpt2_config_reads_the_tokenizer():
    tok = lang.build_tokenizer()
    c = lm_models.gpt2_config(ModelConfig(dropout=0.1), tok)
    assert c.vocab_size == len(lang.VOCAB) and (c.pad_token_id, c.bos_token_id, c.eos_token_id) == (0, 1, 2)
    assert c.resid_pdrop == c.embd_pdrop == c.attn_pdrop == 0.1 and (c.n_layer, c.n_head, c.n_embd) == (2, 4, 64)


# ------------------------------------------------------------------------------------------------ artifacts


def test_pretrained_round_trip_and_metadata(store):
    path = pretrained(TINY_PRE)
    assert path == store / artifact_key(TINY_PRE)
    meta = read_metadata(path)
    assert meta["kind"] == "pretrain" and meta["config"] == as_json(TINY_PRE)
    assert {"torch", "transformers"} <= set(meta["versions"]) and meta["metrics"]["train/loss"] > 0
    assert meta["metrics"]["time/wall_s"] > 0
    model, tok = load_causal_lm(path)
    assert not model.training and tok.pad_token_id == 0 and model.config.n_embd == 32
    prompts, _ = batch(tok)
    ids, mask = encode_prompts(tok, prompts)
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask.long()).logits
        again, _ = load_causal_lm(str(path))
        b = again(input_ids=ids, attention_mask=mask.long()).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_same_config_same_weights_and_second_call_reads_the_cache(store, tmp_path, monkeypatch):
    first = pretrained(TINY_PRE)
    stamp = (first / "emrl.json").stat().st_mtime_ns
    calls = []
    real = lm_models._build_pretrained
    monkeypatch.setattr(lm_models, "_build_pretrained", lambda *a: calls.append(a) or real(*a))
    assert pretrained(TINY_PRE) == first and calls == [] and (first / "emrl.json").stat().st_mtime_ns == stamp
    # a fresh root builds again, with identical weights
    monkeypatch.setenv("EMRL_ARTIFACTS", str(tmp_path / "other"))
    second = pretrained(TINY_PRE)
    assert len(calls) == 1 and second != first
    w1, w2 = weights(first), weights(second)
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    # a different seed gives different weights
    w3 = weights(pretrained(dataclasses.replace(TINY_PRE, seed=1)))
    assert not all(torch.equal(w1[k], w3[k]) for k in w1)


def test_interrupted_build_leaves_no_artifact(tmp_path, monkeypatch):
    root = tmp_path / "crash"
    monkeypatch.setenv("EMRL_ARTIFACTS", str(root))
    steps = []

    def failing(model, loss_fn, n, cfg, gen):
        loss_fn(torch.arange(2)).backward()
        steps.append(1)
        raise KeyboardInterrupt("simulated interruption during training")

    monkeypatch.setattr(lm_models, "_train", failing)
    with pytest.raises(KeyboardInterrupt):
        pretrained(TINY_PRE)
    assert steps == [1] and root.is_dir() and list(root.iterdir()) == []  # the temporary folder is gone
    monkeypatch.undo()
    monkeypatch.setenv("EMRL_ARTIFACTS", str(root))
    assert (pretrained(TINY_PRE) / "emrl.json").is_file()  # and a later call builds it


def test_a_killed_build_is_cleaned_up_by_the_next(tmp_path, monkeypatch):
    """A SIGKILLed builder leaves its temporary folder; the next build of that key removes it once the pid is gone,
    and leaves alone the folder of a builder that is still running."""
    root = tmp_path / "killed"
    root.mkdir()
    monkeypatch.setenv("EMRL_ARTIFACTS", str(root))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    key, host = artifact_key(TINY_PRE), socket.gethostname()
    gone = root / f".{key}.{host}.{dead.pid}.abc123.tmp"
    alive = root / f".{key}.{host}.{os.getpid()}.def456.tmp"
    for d in (gone, alive):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"half")
    pretrained(TINY_PRE)
    assert not gone.exists() and alive.exists()
    assert sorted(p.name for p in root.iterdir()) == sorted([alive.name, key])


def test_losing_a_race_keeps_the_winner(tmp_path, monkeypatch):
    """Another process renames its copy into place while this one builds: this copy is dropped, theirs kept."""
    root = tmp_path / "race"
    monkeypatch.setenv("EMRL_ARTIFACTS", str(root))
    real = lm_models._build_pretrained

    def build_and_lose(cfg, out, device):
        metrics = real(cfg, out, device)
        winner = root / artifact_key(cfg)
        winner.mkdir()
        (winner / "emrl.json").write_text("{}")
        return metrics

    monkeypatch.setattr(lm_models, "_build_pretrained", build_and_lose)
    path = pretrained(TINY_PRE)
    assert (path / "emrl.json").read_text() == "{}" and sorted(p.name for p in root.iterdir()) == [path.name]


def test_load_causal_lm_overrides_dropout(store):
    model, _ = load_causal_lm(pretrained(TINY_PRE), dropout=0.3)
    c = model.config
    assert c.resid_pdrop == c.embd_pdrop == c.attn_pdrop == 0.3 and not model.training
    assert model.transformer.drop.p == 0.3 and model.transformer.h[0].attn.attn_dropout.p == 0.3
    plain, _ = load_causal_lm(pretrained(TINY_PRE))
    assert plain.config.resid_pdrop == 0.0
    with pytest.raises(ConfigError, match="dropout"):
        load_causal_lm(pretrained(TINY_PRE), dropout=1.5)


def test_sft_round_trip_and_quality_metrics(store):
    path = sft_model(TINY_SFT)
    assert (store / artifact_key(TINY_PRE) / "emrl.json").is_file()  # stage 1 was built on the way
    meta = read_metadata(path)
    assert meta["kind"] == "sft" and meta["config"]["pretrain"] == as_json(TINY_PRE)
    m = meta["metrics"]
    assert 0.0 <= m["eval/grammatical"] <= m["eval/eos"] <= 1.0 and m["eval/n"] == 16
    assert lang.UNGRAMMATICAL - 4 <= m["eval/gold_mean"] <= lang.MAX_GOLD_REWARD
    model, tok = load_causal_lm(path)
    prompts, responses = batch(tok)
    data = collate([sft_example(tok, p, r.replace(" [EOS]", "")) for p, r in zip(prompts, responses)], 0)
    with torch.no_grad():
        a = model(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits
        b = load_causal_lm(path)[0](input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    base = weights(pretrained(TINY_PRE))
    tuned = weights(path)
    assert not all(torch.equal(base[k], tuned[k]) for k in base)  # fine-tuned from stage 1, not a copy


def test_reward_model_round_trip_scores_and_metrics(store):
    path = reward_model(TINY_RM)
    meta = read_metadata(path)
    assert meta["kind"] == "rm" and meta["config"]["sft"] == as_json(TINY_SFT)
    m = meta["metrics"]
    assert 0.0 <= m["heldout/rm/accuracy"] <= 1.0 and m["data/heldout_pairs"] == TINY_RM.heldout_pairs == 4
    assert np.isfinite(m["train/loss"])
    model, tok = load_reward_model(path)
    assert not model.training and model.config.num_labels == 1 and model.config.pad_token_id == tok.pad_token_id
    prompts, responses = batch(tok)
    pids, pmask = encode_prompts(tok, prompts)
    rows = [tok(r, add_special_tokens=False)["input_ids"] for r in responses]
    width = max(map(len, rows))
    rids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    rmask = (torch.arange(width) < torch.tensor([len(r) for r in rows])[:, None]).float()
    with torch.no_grad():
        a = reward_scores(model, pids, pmask, rids, rmask, tok.pad_token_id)
        b = reward_scores(load_reward_model(str(path))[0], pids, pmask, rids, rmask, tok.pad_token_id)
        # the score is read at the last real token: extra padding on either side changes nothing
        pad_p = torch.cat([torch.zeros(len(prompts), 3, dtype=torch.long), pids], 1)
        pad_pm = torch.cat([torch.zeros(len(prompts), 3), pmask], 1)
        pad_r = torch.cat([rids, torch.zeros(len(prompts), 2, dtype=torch.long)], 1)
        pad_rm = torch.cat([rmask, torch.zeros(len(prompts), 2)], 1)
        c = reward_scores(model, pad_p, pad_pm, pad_r, pad_rm, tok.pad_token_id)
    assert a.shape == (6,) and a.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)


def test_artifacts_default_to_the_repository_results_folder(monkeypatch):
    """Without $EMRL_ARTIFACTS, artifacts live in <repo root>/results/artifacts (beside the runs), wherever the module
    sits in the package."""
    import pathlib

    monkeypatch.delenv("EMRL_ARTIFACTS", raising=False)
    root = pathlib.Path(__file__).resolve().parents[1]
    assert artifacts_root() == root / "results" / "artifacts"
