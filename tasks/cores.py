"""Memory cores between a torso and the policy/value heads: feed-forward, LSTM, TrXL, TrXL-I and GTrXL.

A core maps the torso features of one unroll, x [T, B, D], and the state carried out of the previous
unroll to y [T, B, H] and the state after the unroll's last step. `first` [T, B] bool marks the first
step of a new episode: nothing from before it reaches that step or the later steps of that episode.

    "ff"      `layers` Linear+ReLU layers of width H; no state.
    "lstm"    one LSTM layer (nn.LSTMCell stepped over T), h and c zeroed before a `first` step.
    "trxl"    Transformer-XL (Dai et al. 2019): relative multi-head attention over the segment and a
              detached memory of each layer's last M inputs; post-norm residual blocks.
    "trxl_i"  TrXL with identity map reordering: pre-norm blocks, ReLU on each sub-layer's output.
    "gtrxl"   TrXL-I whose residual connections are GRU-type gates g(x, y) (the best variant).

Block equations, E the layer input [T steps], SG(M) its detached memory, f the position-wise MLP
(Parisotto et al. 2020, "Stabilizing Transformers for RL", eqs. of TrXL, TrXL-I and GTrXL;
`[EM-LLM] App. B`, `[EM-SFT] §8`):

    trxl     Y = LN(E + MHA(E, SG(M)))                     E' = LN(Y + f(Y))
    trxl_i   Y = E + ReLU(MHA(LN(E), LN(SG(M))))           E' = Y + ReLU(f(LN(Y)))
    gtrxl    Y = g1(E, ReLU(MHA(LN(E), LN(SG(M)))))        E' = g2(Y, ReLU(f(LN(Y))))
    g(x, y): r = σ(W_r y + U_r x),  z = σ(W_z y + U_z x − b_g),  ĥ = tanh(W_g y + U_g (r ⊙ x)),
             g = (1 − z) ⊙ x + z ⊙ ĥ            (b_g = 2 at init puts each gate near the identity)

MHA is the relative attention of Dai et al. 2019 §3.3, per head, query i, key j at distance d = i − j:
    A_ij = (q_i + u)ᵀ k_j + (q_i + v)ᵀ W_R R_d,   R_d = [sin(d ω_k), cos(d ω_k)],  ω_k = 10000^(−2k/H),
softmax over the visible keys after scaling by 1/√(H/heads). Key j is visible to query i iff j ≤ i, j is
in i's episode (episode ids: the cumulative sum of `first` within the unroll; a memory slot is valid iff it
belongs to the episode running at the end of the previous unroll), and with span="sliding" iff d ≤ M.
Query i always sees itself, so no softmax row is empty.

State layouts, batch first in every tensor (so a trainer indexes, masks or stores states per env):
    ff                      ()
    lstm                    (h [B, H], c [B, H])
    trxl, trxl_i, gtrxl     (memory [B, L, M, H] float: each layer's inputs at the last M steps,
                             valid  [B, M] bool: slot belongs to the episode still running)

Deviations: features are projected to H by a Linear "embedding" (the paper's torso emits H directly); no
final LayerNorm; u, v and W_R per layer (Dai's code shares u, v); gate matrices have no bias and b_g is a
learnable per-unit bias initialised to `gate_bias`; episode-boundary masking of memory is ours (the papers
do not say how resets are handled); the LSTM has one layer.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from algorithms.config import ConfigError, check_choices, check_positive, field

CoreKind = Literal["ff", "lstm", "trxl", "trxl_i", "gtrxl"]
Span = Literal["segment", "sliding"]
TRANSFORMERS = ("trxl", "trxl_i", "gtrxl")
State = tuple[Tensor, ...]


@dataclass(frozen=True)
class CoreConfig:
    """Which core sits between the torso and the heads, and its sizes (`make_core` builds it)."""

    kind: CoreKind = dataclasses.field(metadata={"doc": "core: 'ff', 'lstm', 'trxl', 'trxl_i' or 'gtrxl'"})
    hidden: int = field(64, "H: d_model of the transformers, LSTM hidden size, FF width; V-MPO's Atari TrXL: 256")
    layers: int = field(2, "L: transformer blocks, or Linear+ReLU layers of 'ff' (the LSTM has one); V-MPO Atari: 8")
    heads: int = field(2, "attention heads, must divide hidden; V-MPO's Atari TrXL: 4")
    memory: int = field(32, "M: past steps each transformer layer keeps (detached from the gradient)")
    gate_bias: float = field(2.0, "initial GTrXL gate bias b_g; Parisotto et al. 2020: 2")
    mlp_mult: int = field(2, "width of a block's MLP f as a multiple of hidden; V-MPO's Atari TrXL: 512/256 = 2")
    span: Span = field("segment", "step t sees memory + unroll steps <= t ('segment', TrXL) or only its last M "
                                  "steps ('sliding': outputs then do not depend on how steps are cut into unrolls)")

    def __post_init__(self):
        check_choices(self)
        check_positive(self, "hidden", "layers", "heads", "memory", "mlp_mult")
        if self.hidden % self.heads:
            raise ConfigError(f"CoreConfig.heads = {self.heads!r} is invalid: must divide hidden = {self.hidden}.")


class Core(nn.Module):
    """A recurrent or memory core; `out_dim` is the width of its output."""

    out_dim: int

    def initial_state(self, batch: int) -> State:
        """The zero state for `batch` envs (layout in the module docstring; batch is dim 0 of every tensor)."""
        raise NotImplementedError

    def forward(self, x: Tensor, state: State, first: Tensor) -> tuple[Tensor, State]:
        """x [T, B, D], state from `initial_state` or a previous call, first [T, B] bool.

        Returns y [T, B, out_dim] and the state after step T − 1, to carry into the next unroll.
        """
        raise NotImplementedError


class FFCore(Core):
    """`layers` Linear+ReLU layers of width H applied per step; the state is the empty tuple."""

    def __init__(self, in_dim: int, cfg: CoreConfig):
        super().__init__()
        sizes = [in_dim] + [cfg.hidden] * cfg.layers
        self.net = nn.Sequential(*[m for a, b in zip(sizes, sizes[1:]) for m in (nn.Linear(a, b), nn.ReLU())])
        self.out_dim = cfg.hidden

    def initial_state(self, batch: int) -> State:
        return ()

    def forward(self, x: Tensor, state: State, first: Tensor) -> tuple[Tensor, State]:
        return self.net(x), ()


class LSTMCore(Core):
    """One LSTM layer, stepped over T; (h, c) [B, H] are zeroed before each step where `first`."""

    def __init__(self, in_dim: int, cfg: CoreConfig):
        super().__init__()
        self.cell = nn.LSTMCell(in_dim, cfg.hidden)
        self.out_dim = cfg.hidden

    def initial_state(self, batch: int) -> State:
        zero = self.cell.weight_hh.new_zeros(batch, self.out_dim)
        return zero, zero.clone()

    def forward(self, x: Tensor, state: State, first: Tensor) -> tuple[Tensor, State]:
        h, c = state
        keep = (~first.bool()).to(x.dtype)[..., None]  # [T, B, 1]
        cell = self.cell
        pre = F.linear(x, cell.weight_ih, cell.bias_ih)  # the input's share of the gates, every step at once
        ys = []
        for t in range(x.shape[0]):
            # nn.LSTMCell's equations written out (gates i, f, g, o), so the core runs under torch.func.vmap, which has no
            # batching rule for aten::lstm_cell
            i, f, g, o = (pre[t] + F.linear(h * keep[t], cell.weight_hh, cell.bias_hh)).chunk(4, -1)
            c = torch.sigmoid(f) * (c * keep[t]) + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            ys.append(h)
        return torch.stack(ys), (h, c)


def sinusoid(n: int, dim: int, like: Tensor) -> Tensor:
    """R [n, dim]: row d is [sin(d ω_k), cos(d ω_k)]_k with ω_k = 10000^(−2k/dim) (Vaswani et al. 2017)."""
    d = torch.arange(n, dtype=like.dtype, device=like.device)[:, None]
    omega = 10000.0 ** (-torch.arange(0, dim, 2, dtype=like.dtype, device=like.device) / dim)
    return torch.cat([torch.sin(d * omega), torch.cos(d * omega)], -1)[:, :dim]


def visibility(first: Tensor, valid: Tensor, sliding: bool) -> Tensor:
    """visible [B, T, M+T] bool: may query step i see key j (keys: M memory slots, then the T unroll steps)?

    Args: first [T, B] bool; valid [B, M] bool, the memory slots of the episode running before the unroll.
    """
    T, M = first.shape[0], valid.shape[1]
    ep = first.long().cumsum(0).T  # [B, T]: episode index in the unroll, 0 = the episode memory belongs to
    ep_key = torch.cat([torch.where(valid, 0, -1), ep], 1)  # [B, K]; an invalid slot matches no episode
    dist = M + torch.arange(T, device=first.device)[:, None] - torch.arange(M + T, device=first.device)  # [T, K]
    visible = (ep[:, :, None] == ep_key[:, None, :]) & (dist >= 0)
    return visible & (dist <= M) if sliding else visible


class RelativeAttention(nn.Module):
    """Multi-head attention with Transformer-XL relative positions (Dai et al. 2019 §3.3); no biases but u, v."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads, self.dh = heads, hidden // heads
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=False)  # W_q, W_k, W_v stacked
        self.pos = nn.Linear(hidden, hidden, bias=False)  # W_R
        self.u = nn.Parameter(torch.zeros(heads, self.dh))
        self.v = nn.Parameter(torch.zeros(heads, self.dh))
        self.out = nn.Linear(hidden, hidden, bias=False)

    def forward(self, h: Tensor, m: Tensor, visible: Tensor) -> Tensor:
        """Queries h [B, T, H]; keys and values [m, h] with memory m [B, M, H]; visible [B, T, M+T]. -> [B, T, H]."""
        (B, T, H), M = h.shape, m.shape[1]
        K = M + T
        q, k, v = self.qkv(torch.cat([m, h], 1)).view(B, K, 3, self.heads, self.dh).unbind(2)
        q = q[:, M:]
        r = self.pos(sinusoid(K, H, h)).view(K, self.heads, self.dh)  # W_R R_d for d = 0 .. K−1
        content = torch.einsum("bine,bjne->bnij", q + self.u, k)
        by_dist = torch.einsum("bine,dne->bnid", q + self.v, r)
        dist = (M + torch.arange(T, device=h.device)[:, None] - torch.arange(K, device=h.device)).clamp_min(0)
        position = by_dist.gather(-1, dist.expand(B, self.heads, T, K))  # [b, n, i, j] = by_dist[b, n, i, i − j]
        scores = (content + position) / math.sqrt(self.dh)
        weights = scores.masked_fill(~visible[:, None], float("-inf")).softmax(-1)
        return self.out(torch.einsum("bnij,bjne->bine", weights, v).reshape(B, T, H))


class GRUGate(nn.Module):
    """g(x, y) = (1 − z) ⊙ x + z ⊙ ĥ of GTrXL (Parisotto et al. 2020), x the residual, y the sub-layer output."""

    def __init__(self, hidden: int, bias: float):
        super().__init__()
        self.w_r, self.u_r, self.w_z, self.u_z, self.w_g, self.u_g = (nn.Linear(hidden, hidden, bias=False) for _ in range(6))
        self.b_g = nn.Parameter(torch.full((hidden,), float(bias)))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        r = torch.sigmoid(self.w_r(y) + self.u_r(x))
        z = torch.sigmoid(self.w_z(y) + self.u_z(x) - self.b_g)
        h = torch.tanh(self.w_g(y) + self.u_g(r * x))
        return (1 - z) * x + z * h


class Block(nn.Module):
    """One transformer layer; `kind` picks the equations of the module docstring. TrXL and TrXL-I hold the same
    parameters (same names, same init order); GTrXL adds `gate1` (after attention) and `gate2` (after the MLP)."""

    def __init__(self, cfg: CoreConfig):
        super().__init__()
        H = cfg.hidden
        self.kind = cfg.kind
        self.attn = RelativeAttention(H, cfg.heads)
        self.norm1, self.norm2 = nn.LayerNorm(H), nn.LayerNorm(H)
        self.mlp = nn.Sequential(nn.Linear(H, cfg.mlp_mult * H), nn.ReLU(), nn.Linear(cfg.mlp_mult * H, H))
        if cfg.kind == "gtrxl":
            self.gate1, self.gate2 = GRUGate(H, cfg.gate_bias), GRUGate(H, cfg.gate_bias)

    def forward(self, e: Tensor, m: Tensor, visible: Tensor) -> Tensor:
        """Layer input e [B, T, H], detached memory m [B, M, H], visible [B, T, M+T] -> layer output [B, T, H]."""
        if self.kind == "trxl":
            y = self.norm1(e + self.attn(e, m, visible))
            return self.norm2(y + self.mlp(y))
        a = torch.relu(self.attn(self.norm1(e), self.norm1(m), visible))
        y = self.gate1(e, a) if self.kind == "gtrxl" else e + a
        f = torch.relu(self.mlp(self.norm2(y)))
        return self.gate2(y, f) if self.kind == "gtrxl" else y + f


class TransformerCore(Core):
    """Embedding Linear(D, H), then L blocks; each block's inputs at the last M steps are kept, detached.

    Running T1 + T2 steps in one call equals running T1 then T2 with the carried state only if no step
    the one call lets a query see has been dropped from memory at the boundary (e.g. from the initial
    state with M >= T1): with span="segment" a query sees the whole unroll before it plus M memory steps,
    so its context depends on where the unroll started. With span="sliding" it holds for any cut, and an
    actor stepping one step at a time computes exactly what the learner recomputes over the unroll; with
    "segment" the learner's step t has M + t steps of context where the actor had M.
    """

    def __init__(self, in_dim: int, cfg: CoreConfig):
        super().__init__()
        self.cfg, self.out_dim = cfg, cfg.hidden
        self.embed = nn.Linear(in_dim, cfg.hidden)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))

    def initial_state(self, batch: int) -> State:
        c, w = self.cfg, self.embed.weight
        return w.new_zeros(batch, c.layers, c.memory, c.hidden), torch.zeros(batch, c.memory, dtype=torch.bool, device=w.device)

    def forward(self, x: Tensor, state: State, first: Tensor) -> tuple[Tensor, State]:
        memory, valid = state
        first, M = first.bool(), self.cfg.memory
        visible = visibility(first, valid, self.cfg.span == "sliding")
        h = self.embed(x).transpose(0, 1)  # [B, T, H]
        new_memory = []
        for layer, block in enumerate(self.blocks):
            m = memory[:, layer].detach()
            new_memory.append(torch.cat([m, h.detach()], 1)[:, -M:])
            h = block(h, m, visible)
        ep = first.long().cumsum(0).T  # [B, T]
        still = valid & (ep[:, -1:] == 0)  # memory slots whose episode is still running
        new_valid = torch.cat([still, ep == ep[:, -1:]], 1)[:, -M:]
        return h.transpose(0, 1), (torch.stack(new_memory, 1), new_valid)


def make_core(in_dim: int, cfg: CoreConfig) -> Core:
    """The core `cfg.kind` for torso features of width `in_dim`; its output width is `.out_dim` = cfg.hidden."""
    if cfg.kind == "ff":
        return FFCore(in_dim, cfg)
    if cfg.kind == "lstm":
        return LSTMCore(in_dim, cfg)
    return TransformerCore(in_dim, cfg)
