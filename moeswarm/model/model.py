"""The byte-level Mixture-of-Experts transformer, top to bottom.

    bytes (B, T) -> token + position embedding -> n_layers x [x + attn(ln1(x)); x + moe(ln2(x))]
                 -> ln_f -> lm_head -> logits (B, T, 256)

Every block's MLP is a top-k MoE layer. Expert weights are stacked, `w_in [E, D, F]` and
`w_out [E, F, D]`, so "expert e" is the row e of each stacked tensor in every layer; `state.py` turns that
into stable per-expert names for the swarm. Tokens reach their experts by one stable sort of the
(token, slot) assignments by expert id, then each expert runs on its contiguous slice (a Python loop
over the E experts, never over tokens). On CPU that measured faster than padded batched matmuls, whose
padding to the busiest expert wastes work, and `F.grouped_mm` has no CPU backward in torch 2.13.

Shape letters: B batch, T time, D d_model, H heads, E experts, K top_k, F d_ff, N = B*T tokens,
A = N*K assignments.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moeswarm.model.config import MoEConfig

EXPERT_TENSORS = ("w_in", "w_out")  # the stacked per-expert tensors of every MoE layer, in this order


class CausalSelfAttention(nn.Module):
    def __init__(self, config: MoEConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=False)

    def forward(self, x_BTD: Tensor) -> Tensor:
        B, T, D = x_BTD.shape
        qkv = self.qkv(x_BTD).view(B, T, 3, self.n_heads, D // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, D/H)
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True)  # (B, H, T, D/H)
        out_BTD: Tensor = self.proj(y.transpose(1, 2).reshape(B, T, D))
        return out_BTD


@dataclasses.dataclass(frozen=True)
class Routing:
    """The router's decision for N tokens: which K experts each token goes to, and with what weight."""

    logits_NE: Tensor  # float32 router logits
    probs_NE: Tensor  # softmax over all experts
    experts_NK: Tensor  # int64 expert ids, distinct within a row
    weights_NK: Tensor  # renormalised top-k probabilities; each row sums to 1


def route(logits_NE: Tensor, top_k: int) -> Routing:
    """Softmax over experts, keep the top k, renormalise the kept probabilities to sum to 1."""
    logits_NE = logits_NE.float()
    probs_NE = torch.softmax(logits_NE, dim=-1)
    top_NK, experts_NK = torch.topk(probs_NE, top_k, dim=-1)
    weights_NK = top_NK / top_NK.sum(dim=-1, keepdim=True)
    return Routing(logits_NE, probs_NE, experts_NK, weights_NK)


@dataclasses.dataclass(frozen=True)
class Dispatch:
    """A stable sort of the A = N*K assignments by expert id, so each expert's tokens are contiguous."""

    order_A: Tensor  # assignment index (row-major over (N, K)) at each sorted position
    inverse_A: Tensor  # sorted position of each assignment: order_A[inverse_A] == arange(A)
    counts: list[int]  # assignments per expert, length E; sorted slice of expert e starts at sum(counts[:e])
    top_k: int


def plan_dispatch(experts_NK: Tensor, n_experts: int) -> Dispatch:
    flat_A = experts_NK.reshape(-1)
    order_A = torch.argsort(flat_A, stable=True)
    inverse_A = torch.empty_like(order_A)
    inverse_A[order_A] = torch.arange(order_A.numel(), device=order_A.device)
    counts = torch.bincount(flat_A, minlength=n_experts).tolist()
    return Dispatch(order_A, inverse_A, counts, experts_NK.shape[1])


def dispatch(x_ND: Tensor, plan: Dispatch) -> Tensor:
    """Token rows in expert order: (N, D) -> (A, D); assignment a belongs to token a // K."""
    # index_select, not x[idx]: its backward is an index_add, about twice as fast on CPU as index_put
    return x_ND.index_select(0, plan.order_A // plan.top_k)


def undispatch(y_AD: Tensor, plan: Dispatch) -> Tensor:
    """Inverse of `dispatch`: expert-ordered rows back to (N, K, D) in (token, slot) order."""
    N = y_AD.shape[0] // plan.top_k
    return y_AD.index_select(0, plan.inverse_A).view(N, plan.top_k, y_AD.shape[1])


def combine(y_AD: Tensor, plan: Dispatch, weights_NK: Tensor) -> Tensor:
    """Each token's output is the router-weighted sum of its K experts' outputs: (A, D) -> (N, D)."""
    y_NKD = undispatch(y_AD, plan)
    return (y_NKD * weights_NK.unsqueeze(-1).to(y_NKD.dtype)).sum(dim=1)


class MoELayer(nn.Module):
    """Top-k mixture of GELU experts with stacked weights and Switch-style auxiliary losses."""

    def __init__(self, config: MoEConfig) -> None:
        super().__init__()
        self.n_experts = config.n_experts
        self.top_k = config.top_k
        self.router = nn.Linear(config.d_model, config.n_experts, bias=False)
        self.w_in = nn.Parameter(torch.empty(config.n_experts, config.d_model, config.d_ff))
        self.w_out = nn.Parameter(torch.empty(config.n_experts, config.d_ff, config.d_model))
        self.last_counts: list[int] = [0] * config.n_experts  # assignments per expert in the last forward

    def experts(self, x_AD: Tensor, counts: list[int]) -> Tensor:
        """Run each expert on its contiguous slice of the sorted assignments: (A, D) -> (A, D)."""
        # split / unbind rather than slicing in the loop: their backward is one cat / stack, where each
        # slice's backward would allocate and sum a full-size zero gradient per expert.
        w_in, w_out = self.w_in.unbind(0), self.w_out.unbind(0)
        outs = [
            F.gelu(x_nD @ w_in[e]) @ w_out[e] for e, x_nD in enumerate(torch.split(x_AD, counts)) if counts[e]
        ]
        return torch.cat(outs, dim=0)

    def forward(self, x_BTD: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Returns (output (B, T, D), load-balancing loss, router z-loss).

        1. route every token to its top-k experts; 2. sort assignments by expert; 3. run each expert on
        its slice; 4. unsort and sum each token's K outputs weighted by the router.
        """
        B, T, D = x_BTD.shape
        x_ND = x_BTD.reshape(B * T, D)
        routing = route(self.router(x_ND), self.top_k)
        plan = plan_dispatch(routing.experts_NK, self.n_experts)
        y_AD = self.experts(dispatch(x_ND, plan), plan.counts)
        y_ND = combine(y_AD, plan, routing.weights_NK)
        self.last_counts = plan.counts
        # Switch loss: E * sum_e (share of assignments to e) * (mean router probability of e); 1 if balanced.
        share_E = torch.tensor(plan.counts, dtype=torch.float32, device=x_BTD.device) / len(plan.order_A)
        balance = self.n_experts * torch.sum(share_E * routing.probs_NE.mean(dim=0))
        z_loss = torch.logsumexp(routing.logits_NE, dim=-1).square().mean()
        return y_ND.view(B, T, D), balance, z_loss


class Block(nn.Module):
    def __init__(self, config: MoEConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(config.d_model)
        self.moe = MoELayer(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x_BTD: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x_BTD = x_BTD + self.drop(self.attn(self.ln1(x_BTD)))
        y_BTD, balance, z_loss = self.moe(self.ln2(x_BTD))
        return x_BTD + self.drop(y_BTD), balance, z_loss


@dataclasses.dataclass(frozen=True)
class ModelOutput:
    logits: Tensor  # (B, T, 256)
    loss: Tensor | None  # what training minimises: ce + aux_loss_weight * balance + z_loss_weight * z_loss
    ce: Tensor | None  # mean cross-entropy in nats per byte; bits per byte = ce / ln 2
    balance: Tensor  # load-balancing loss averaged over layers
    z_loss: Tensor  # router z-loss averaged over layers


class MoETransformer(nn.Module):
    """Byte-level MoE language model. Initialisation is drawn from `seed` alone, never the global RNG."""

    def __init__(self, config: MoEConfig, *, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.context, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.reset_parameters(seed)

    @torch.no_grad()
    def reset_parameters(self, seed: int) -> None:
        """GPT-2 style: N(0, std) everywhere, residual output projections scaled by 1/sqrt(2 * layers)."""
        gen = torch.Generator().manual_seed(seed)
        std = self.config.init_std
        residual_std = std / math.sqrt(2 * self.config.n_layers)
        for name, p in self.named_parameters():
            if name.endswith(("ln1.weight", "ln2.weight", "ln_f.weight")):
                p.fill_(1.0)
            elif name.endswith(("ln1.bias", "ln2.bias", "ln_f.bias")):
                p.zero_()
            else:
                is_residual_out = name.endswith(("attn.proj.weight", "moe.w_out"))
                cpu = torch.empty(p.shape).normal_(
                    0.0, residual_std if is_residual_out else std, generator=gen
                )
                p.copy_(cpu)

    def moe_layers(self) -> list[MoELayer]:
        """The MoE layer of every block, in order (typed access for the state and optimizer code)."""
        return [block.moe for block in self.blocks if isinstance(block, Block)]

    def num_params(self, *, active: bool = False) -> int:
        """All parameters, or (active=True) those one token uses: only K of the E experts."""
        total = sum(p.numel() for p in self.parameters())
        if not active:
            return total
        per_expert: int = sum(
            getattr(m, t).numel() // self.config.n_experts for m in self.moe_layers() for t in EXPERT_TENSORS
        )
        return total - (self.config.n_experts - self.config.top_k) * per_expert

    def forward(self, idx_BT: Tensor, targets_BT: Tensor | None = None) -> ModelOutput:
        """Embed bytes, run the blocks, project to byte logits; with targets also return the losses."""
        B, T = idx_BT.shape
        if self.config.context < T:
            raise ValueError(f"sequence length {T} exceeds the model context {self.config.context}")
        pos_T = torch.arange(T, device=idx_BT.device)
        x_BTD = self.drop(self.tok_emb(idx_BT) + self.pos_emb(pos_T))
        balances, z_losses = [], []
        for block in self.blocks:
            x_BTD, balance, z_loss = block(x_BTD)
            balances.append(balance)
            z_losses.append(z_loss)
        logits_BTV = self.lm_head(self.ln_f(x_BTD))
        balance = torch.stack(balances).mean()
        z_loss = torch.stack(z_losses).mean()
        if targets_BT is None:
            return ModelOutput(logits_BTV, None, None, balance, z_loss)
        ce = F.cross_entropy(logits_BTV.float().view(B * T, -1), targets_BT.reshape(B * T))
        loss = ce + self.config.aux_loss_weight * balance + self.config.z_loss_weight * z_loss
        return ModelOutput(logits_BTV, loss, ce, balance, z_loss)
