"""The LM loop's procedures for real English and real scale (issue 18): chunked per-token log-probs and KLs (equal to
the full log-softmax, with a peak that grows with T, not T·V), the reference refresh at its stated period, explicit
ties (PMPO's labels, DPO's pairs), the English corpus's split and artifacts round-tripping through
save_pretrained / from_pretrained, and a policy given as a local directory of a GPT-2 with the standard vocabulary."""

import copy

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from algorithms import REGISTRY
from algorithms.dpo import DPO, DPOConfig
from algorithms.base import Batch
from tasks.base import RunSpec
from tasks.lm import corpora, english
from tasks.lm.models import load_causal_lm, load_reward_model, pretrained, read_metadata, reward_model, sft_model
from tasks.lm.rlhf import Learner, LMRLHFConfig, LMTaskConfig, accept_reject, stages, train_one
from tasks.lm.tokens import (forward_response, gather_tokens, hidden_response, output_head, token_kl, token_kl_hidden,
                             token_logprobs)

pytestmark = pytest.mark.usefixtures("one_torch_thread", "module_artifacts")

TASK = LMTaskConfig(corpus="english", stages="tiny", eval_prompts=4, train_prompts=64, final_prompts=6, final_samples=2)
LOOP = LMRLHFConfig(updates=4, prompts_per_update=4, eval_every=2, epochs=2, minibatches=2)


def _spec(algo="ppo", loop=LOOP, task=TASK, seed=0):
    return RunSpec("lm-english", task, algo, REGISTRY[algo].Config(), loop, seed)


def _gpt2(vocab: int, n_positions: int = 48, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=n_positions, n_embd=32, n_layer=1, n_head=2)).eval()


# ------------------------------------------------------------------------------------------------ chunked log-probs
def test_chunked_logprobs_and_kls_equal_the_full_log_softmax_with_gradients():
    torch.manual_seed(0)
    p, q = _gpt2(500, seed=0), _gpt2(500, seed=1)
    ids = torch.randint(4, 500, (3, 6))
    pm = torch.ones(3, 6)
    r = torch.randint(4, 500, (3, 13))
    rm = torch.ones(3, 13)
    rm[1, 7:] = 0
    full, _ = forward_response(p, ids, pm, r, rm)
    h = hidden_response(p, ids, pm, r, rm)
    chunked = token_logprobs(h, output_head(p), r, rm, chunk=4)
    torch.testing.assert_close(chunked, gather_tokens(full, r, rm), rtol=0, atol=1e-5)
    fq, _ = forward_response(q, ids, pm, r, rm)
    hq = hidden_response(q, ids, pm, r, rm)
    kl = token_kl_hidden(hq, output_head(q), h, output_head(p), rm, chunk=5)
    ref = token_kl(fq.detach(), full, rm)
    torch.testing.assert_close(kl, ref, rtol=0, atol=1e-5)
    g_chunk = torch.autograd.grad((chunked.sum() + kl.sum()), list(p.parameters()), allow_unused=True)
    full2, _ = forward_response(p, ids, pm, r, rm)
    g_full = torch.autograd.grad(gather_tokens(full2, r, rm).sum() + token_kl(fq.detach(), full2, rm).sum(),
                                 list(p.parameters()), allow_unused=True)
    for a, b in zip(g_chunk, g_full):
        if a is not None or b is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


class _Largest(TorchDispatchMode):
    """Records the most elements of any tensor an op makes (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.most = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor):
                self.most = max(self.most, t.numel())
        return out


def _largest_in_logprob_step(T: int, V: int) -> int:
    model = _gpt2(V, n_positions=8 + T)
    ids, pm = torch.randint(4, V, (2, 8)), torch.ones(2, 8)
    r, rm = torch.randint(4, V, (2, T)), torch.ones(2, T)
    h = hidden_response(model, ids, pm, r, rm).detach().requires_grad_(True)
    with _Largest() as seen:
        lp = token_logprobs(h, output_head(model), r, rm, chunk=8)
        kl = token_kl_hidden(h.detach(), output_head(model), h, output_head(model), rm, chunk=8)
        (lp.sum() + kl.sum()).backward()
    return seen.most


def test_peak_of_the_logprob_step_grows_with_T_not_T_times_V():
    """Every tensor of the log-prob and KL step (forward and backward, from the hidden states on) is at most one chunk
    of logits [B, chunk, V] (or the head's weight), however long the response: 4× the length leaves the largest
    tensor where it was, while a full log-softmax would grow 4×."""
    V = 50257  # GPT-2's vocabulary
    short, long = _largest_in_logprob_step(16, V), _largest_in_logprob_step(64, V)
    assert long == short
    assert long <= max(2 * 8 * V, V * 32)  # one chunk of logits of both rows, or the head's weight [V, H]
    assert long < 2 * 64 * V  # what [B, T, V] would be


# ------------------------------------------------------------------------------------------------ procedures
def test_reference_refresh_happens_at_the_stated_period(monkeypatch):
    seen = []
    real = Learner.refresh_reference

    def spy(self):
        real(self)
        seen.append({k: v.clone() for k, v in self.ref.state_dict().items()})
        for k, v in self.policy.state_dict().items():  # π_ref is the policy at that moment
            torch.testing.assert_close(self.ref.state_dict()[k], v, rtol=0, atol=0)

    monkeypatch.setattr(Learner, "refresh_reference", spy)
    loop = LMRLHFConfig(updates=5, prompts_per_update=4, eval_every=5, ref_refresh=2)
    result = train_one(_spec("pmpo", loop=loop))
    assert result.status == "ok"
    assert [s for s, m, _ in result.rows if m == "ref/refreshed"] == [2, 4] and len(seen) == 2
    never = train_one(_spec("pmpo", loop=LMRLHFConfig(updates=3, prompts_per_update=4, eval_every=3)))
    assert not [m for _, m, _ in never.rows if m == "ref/refreshed"]


def test_evaluation_kl_is_to_the_starting_model_after_a_refresh():
    learner = Learner(_spec("pmpo", loop=LMRLHFConfig(updates=1, prompts_per_update=4, ref_refresh=1)))
    with torch.no_grad():
        for p in learner.policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    learner.refresh_reference()
    assert learner.ref is not learner.start
    from tasks.lm.rlhf import Rewards, task_prompts
    from tasks.seeding import generator

    ro = learner.rollout(task_prompts(TASK, "heldout", 4), Rewards(TASK, learner.tokenizer), generator(0, "t"), k=2)
    assert float(learner.kl_to_ref(ro).abs().max()) < 1e-5  # π_ref = π_θ = π_old right after the refresh
    assert float(learner.kl_to_start(ro).min()) > 0


def test_accept_reject_ties_get_neither_label():
    score = torch.tensor([[3.0, 1.0, 1.0, 0.0], [2.0, 2.0, 2.0, 2.0], [4.0, 3.0, 2.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    label, tied = accept_reject(score, "neither")
    assert label.reshape(4, 4).tolist() == [[1, 0, 0, -1], [0, 0, 0, 0], [1, 1, -1, -1], [1, 1, -1, -1]]
    assert tied.tolist() == [True, True, False, False]
    by_index, _ = accept_reject(score, "index")
    assert by_index.reshape(4, 4).tolist()[0] == [1, 1, -1, -1] and by_index.reshape(4, 4).tolist()[1] == [1, 1, -1, -1]


def test_dpo_drops_pairs_whose_best_and_worst_tie():
    torch.manual_seed(0)
    logp = torch.randn(3, 4, requires_grad=True)
    score = torch.tensor([[1.0, 0.0, 0.5, 0.2], [0.0, 0.0, 0.0, 0.0], [2.0, 1.0, 1.0, 0.0]])
    batch = Batch(logp=logp, score=score, mask=torch.ones(3, 4), logp_ref=torch.zeros(3, 4))
    loss, m = DPO(DPOConfig(beta=0.1)).loss(batch)
    keep = Batch(logp=logp[[0, 2]], score=score[[0, 2]], mask=torch.ones(2, 4), logp_ref=torch.zeros(2, 4))
    torch.testing.assert_close(loss, DPO(DPOConfig(beta=0.1)).loss(keep)[0] * 2 / 3)  # the tied prompt adds 0
    grad = torch.autograd.grad(loss, logp)[0]
    assert grad[1].abs().max() == 0 and grad[0].abs().max() > 0
    assert abs(float(m["pairs/tied"]) - 1 / 3) < 1e-6


# ------------------------------------------------------------------------------------------------ English artifacts
def test_english_split_is_by_work_and_the_match_reward_reads_the_prompt(no_network):
    cfg = english.EnglishConfig()
    train, heldout = english.split_speeches(cfg, "train"), english.split_speeches(cfg, "heldout")
    by_work = {k: english.speeches(t) for k, t in english.works().items()}
    assert list(heldout) == [s for k, v in by_work.items() if k in cfg.heldout for s in v]
    assert list(train) == [s for k, v in by_work.items() if k not in cfg.heldout for s in v]
    heldout = set(heldout)
    for p in english.prompts(cfg, "heldout", 50, seed=0):
        assert any(s.startswith(p) for s in heldout)
    polar = english.prompts(cfg, "train", 40, seed=0, polar=True)
    assert all(abs(v) >= english.POLAR for v in english.gold_sentiment(polar))
    happy, sad = "I love thee, sweet and gentle friend", "O grief, O woe, most wretched"
    r = english.gold_rewards([happy, sad], ["joy and love [EOS]"] * 2, "match")
    assert r[0] > 0 > r[1] and r[0] == -r[1]
    assert english.gold_rewards([sad], ["joy and love [EOS] hate hate"])[0] == np.float32(english.gold_sentiment(["joy and love"])[0])


def test_english_tokenizer_models_and_rm_round_trip_through_save_pretrained():
    sft_cfg, rm_cfg = stages(TASK)
    path = sft_model(sft_cfg)
    model, tok = load_causal_lm(path)
    assert tok.convert_ids_to_tokens([0, 1, 2, 3]) == list(english.SPECIALS)
    assert model.config.resid_pdrop == 0.1  # the base model is trained with dropout
    text = "Now is the winter of our discontent"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    meta = read_metadata(path)
    assert {"eval/well_formed", "eval/gold_mean", "eval/words"} <= set(meta["metrics"])
    base = read_metadata(pretrained(sft_cfg.pretrain))["metrics"]
    assert base["heldout/perplexity"] > 1 and base["heldout/documents"] > 0
    rm, rm_tok = load_reward_model(reward_model(rm_cfg))
    assert rm_tok.get_vocab() == tok.get_vocab() and rm.config.num_labels == 1


def test_a_local_gpt2_of_the_standard_vocabulary_trains_end_to_end(tmp_path):
    """`task.policy=<local dir>`: a GPT-2 with GPT-2's 50,257-row vocabulary built here (no download), its tokenizer
    saved beside it; the proxy reward model reads the decoded text with its own tokenizer."""
    tok = copy.deepcopy(corpora.tokenizer(stages(TASK)[0].pretrain.language))
    tok.add_tokens([f"<extra{i}>" for i in range(50257 - len(tok))])  # GPT-2's vocabulary size, a different vocabulary
    model = _gpt2(50257, n_positions=64)
    model.config.update({"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
                         "pad_token_id": tok.pad_token_id})
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    task = LMTaskConfig(corpus="english", stages="tiny", policy=str(tmp_path), eval_prompts=4, train_prompts=16,
                        final_prompts=4, final_samples=1)
    result = train_one(_spec("pmpo", loop=LMRLHFConfig(updates=2, prompts_per_update=2, eval_every=2), task=task))
    assert result.status == "ok", result.diverged
    assert {"final/gold", "final/proxy", "final/kl_ref"} <= {m for _, m, _ in result.rows}


def test_l8_check_trains_on_the_english_corpus_demonstrations():
    """L8's two SFT copies read the task's own corpus (English speeches here), capped at the response length."""
    from algorithms.sft import SFTConfig
    from tasks.lm.sft_check import LMSFTCheckConfig, sft_check

    spec = RunSpec("lm-english", TASK, "sft", SFTConfig(), LMSFTCheckConfig(steps=3, batch_size=4), 0)
    result = sft_check(spec, stages(TASK)[0].pretrain)
    assert result.status == "ok"
    diffs = [v for _, m, v in result.rows if m == "check/max_param_diff"]
    assert len(diffs) == 3 and max(diffs) < 1e-5


def test_diversity_counts_distinct_ngrams_overall_and_per_prompt():
    """distinct-n over every response, and per prompt among its k samples (1/k when the k samples are one text)."""
    cfg = english.EnglishConfig()
    same = ["good night sweet prince [EOS]"] * 2
    varied = ["good night sweet prince [EOS]", "flights of angels sing [EOS] [PAD]"]
    d_same, d_varied = corpora.diversity(cfg, same, k=2), corpora.diversity(cfg, varied, k=2)
    assert d_same["distinct_1"] == 0.5 and d_same["distinct_2"] == 0.5 and d_same["prompt_distinct_2"] == 0.5
    assert d_varied["distinct_1"] == 1.0 and d_varied["distinct_2"] == 1.0 and d_varied["prompt_distinct_2"] == 1.0
    assert "prompt_distinct_2" not in corpora.diversity(cfg, varied, k=1)
    assert corpora.words(cfg, "good night [EOS] ignored") == ["good", "night"]
