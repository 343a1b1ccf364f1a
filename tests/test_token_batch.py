"""Token-level `Batch` fields: token-level methods read them, and a batch without them is read as before (T = 1)."""

import torch

from algorithms import REGISTRY, Batch
from algorithms.grpo import grpo_loss
from algorithms.ppo import ppo_loss
from algorithms.reinforce_pp import reinforce_pp_loss


def _token_batch(seed=0, B=3, K=4, T=5):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B, K), generator=g)
    mask = (torch.arange(T) < lengths[..., None]).float()
    tok = -torch.rand(B, K, T, generator=g)
    tok = torch.where(mask > 0, tok, torch.zeros_like(tok)).requires_grad_()
    old = torch.where(mask > 0, tok.detach() - 0.1 * torch.rand(B, K, T, generator=g), torch.zeros_like(tok))
    ref = torch.where(mask > 0, tok.detach() - 0.2 * torch.rand(B, K, T, generator=g), torch.zeros_like(tok))
    score = torch.randn(B, K, generator=g)
    batch = Batch(logp=tok.sum(-1), score=score, mask=torch.ones(B, K), logp_old=old.sum(-1), logp_ref=ref.sum(-1),
                  token_logp=tok, token_logp_old=old, token_logp_ref=ref, token_mask=mask)
    return batch, tok, old, ref, mask, score


def test_tokens_falls_back_to_one_token_per_sample():
    b = Batch(logp=torch.zeros(2, 3), score=torch.zeros(2, 3), mask=torch.ones(2, 3), logp_old=torch.ones(2, 3))
    logp, old, ref, mask = b.tokens()
    assert logp.shape == (2, 3, 1) and old.shape == (2, 3, 1) and ref is None and mask.shape == (2, 3, 1)


def test_token_level_methods_use_the_token_fields():
    batch, tok, old, ref, mask, score = _token_batch()
    grpo = REGISTRY["grpo"](REGISTRY["grpo"].Config())
    c = grpo.cfg
    want, _ = grpo_loss(tok, old, ref, score, mask, clip_eps=c.clip_eps, beta=c.beta, reduction=c.reduction, std_eps=c.std_eps)
    got, _ = grpo(batch)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    rpp = REGISTRY["reinforce_pp"](REGISTRY["reinforce_pp"].Config())
    c = rpp.cfg
    want, _ = reinforce_pp_loss(tok, old, ref, score, mask, clip_eps=c.clip_eps, beta=c.beta, gamma=c.gamma,
                                reduction=c.reduction)
    torch.testing.assert_close(rpp(batch)[0], want, rtol=0, atol=0)
    # with T > 1 the per-token ratio differs from the one-token-per-sample reading of the same sums
    one = Batch(logp=batch.logp, score=score, mask=batch.mask, logp_old=batch.logp_old, logp_ref=batch.logp_ref)
    assert not torch.allclose(rpp(one)[0], want)


def test_token_level_ppo_takes_per_token_advantages_and_values():
    batch, tok, old, ref, mask, score = _token_batch(seed=1)
    g = torch.Generator().manual_seed(2)
    adv, value = torch.randn(mask.shape, generator=g), torch.randn(mask.shape, generator=g).requires_grad_()
    target = torch.randn(mask.shape, generator=g)
    batch.score, batch.value, batch.value_old, batch.value_target = adv, value, value.detach(), target
    ppo = REGISTRY["ppo"](REGISTRY["ppo"].Config())
    c = ppo.cfg
    want, _ = ppo_loss(tok, old, adv, mask, clip_eps=c.clip_eps, ratio_level="token", reduction=c.reduction,
                       advantage_norm=c.advantage_norm, value=value, value_old=value.detach(), value_target=target,
                       value_mask=mask, value_clip=c.value_clip, vf_coef=c.vf_coef)
    torch.testing.assert_close(ppo(batch)[0], want, rtol=0, atol=0)
    # sequence-level PPO: one ratio exp(Σ_t ℓ − ℓ_old) per sequence with a per-sequence advantage
    seq = REGISTRY["ppo"](REGISTRY["ppo"].Config(ratio_level="sequence", vf_coef=0.0, value_clip=None))
    batch.score, batch.value = score, None
    loss, metrics = seq(batch)
    ratio = (tok.detach() - old).sum(-1).exp()
    assert abs(float(metrics["ratio/mean"]) - float(ratio.mean())) < 1e-5
