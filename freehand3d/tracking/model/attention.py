"""Multi-head attention with optional relative-key positions, and the two transformer layer kinds
DualTrack uses (post-LN "BERT" layers and pre-LN "ViT" layers).

Relative-key attention (SPEC §5), per head with head dim d and a table E of shape (2P-1, d) shared
by the heads of a layer::

    score(i, j) = (q_i . k_j + q_i . E[i - j + P - 1]) / sqrt(d)

The positional term is passed to :func:`torch.nn.functional.scaled_dot_product_attention` as an
additive float mask, so the fused kernel does the rest; queries are processed in blocks so the
(heads x N x N) score matrix of a long sweep never exists in full.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Largest number of attention-score elements (batch x heads x queries x keys) built at once; longer
#: sweeps are processed in blocks of queries (rows are independent, so the result is identical).
MAX_SCORE_ELEMENTS = 1 << 24

#: Use the fused ``scaled_dot_product_attention`` kernel. False computes softmax(QK^T s + bias) V
#: step by step (the textbook path; kept for the benchmark's reference and for debugging).
USE_FUSED_ATTENTION = True


def relative_key_bias(queries: torch.Tensor, table: torch.Tensor, n_keys: int, query_offset: int = 0) -> torch.Tensor:
    """Positional scores ``q_i . E[i - j + P - 1]`` for queries ``query_offset + r`` and keys 0..n_keys-1.

    Parameters
    ----------
    queries : (B, H, Q, d) projected queries (rows ``query_offset .. query_offset + Q - 1``).
    table : (2P - 1, d) relative-position table.
    n_keys : number of keys (positions 0..n_keys-1).

    Returns
    -------
    (B, H, Q, n_keys) tensor, not yet divided by sqrt(d).
    """
    n_queries = queries.shape[-2]
    max_pos = (table.shape[0] + 1) // 2
    first = query_offset - (n_keys - 1) + max_pos - 1  # table row of (i = offset, j = n_keys - 1)
    last = query_offset + n_queries - 1 + max_pos - 1  # table row of (i = offset + Q - 1, j = 0)
    if first < 0 or last >= table.shape[0]:
        raise ValueError(f"sequence of {max(n_keys, query_offset + n_queries)} positions exceeds the {max_pos} the model supports")
    window = table[first : last + 1]  # only the rows these queries can reach
    scores = torch.matmul(queries, window.transpose(0, 1))  # (B, H, Q, Q + n_keys - 1)
    rows = torch.arange(n_queries, device=queries.device)[:, None]
    cols = torch.arange(n_keys, device=queries.device)[None, :]
    index = (rows - cols + n_keys - 1).expand(*scores.shape[:-1], n_keys)
    return torch.gather(scores, -1, index)


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over ``heads`` heads (queries, keys and values with bias).

    Parameters
    ----------
    dim : width of the query stream (and of the output, before any output projection).
    heads : number of heads; ``dim`` must divide evenly.
    kv_dim : width of the key/value stream (cross-attention); defaults to ``dim``.
    max_positions : when given, adds relative-key positions with a (2P-1, dim/heads) table.
    """

    def __init__(self, dim: int, heads: int, kv_dim: int | None = None, max_positions: int | None = None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.head_dim = dim // heads
        kv_dim = dim if kv_dim is None else kv_dim
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(kv_dim, dim)
        self.value = nn.Linear(kv_dim, dim)
        self.relative_table = None
        if max_positions is not None:
            self.relative_table = nn.Parameter(torch.zeros(2 * max_positions - 1, self.head_dim))
            nn.init.normal_(self.relative_table, std=0.02)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Attend from ``x`` (B, N, dim) to ``context`` (B, M, kv_dim; defaults to ``x``)."""
        context = x if context is None else context
        q = self._split(self.query(x))
        k = self._split(self.key(context))
        v = self._split(self.value(context))
        b, h, n_q, d = q.shape
        n_k = k.shape[-2]
        scale = d**-0.5
        block = max(1, MAX_SCORE_ELEMENTS // max(1, b * h * n_k))
        outputs = []
        for start in range(0, n_q, block):
            q_blk = q[:, :, start : start + block]
            mask = None
            if self.relative_table is not None:
                mask = relative_key_bias(q_blk, self.relative_table.to(q.dtype), n_k, start) * scale
            if USE_FUSED_ATTENTION:
                outputs.append(F.scaled_dot_product_attention(q_blk, k, v, attn_mask=mask, scale=scale))
            else:
                scores = torch.matmul(q_blk, k.transpose(-1, -2)) * scale
                if mask is not None:
                    scores = scores + mask
                outputs.append(torch.matmul(torch.softmax(scores, dim=-1), v))
        out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
        return out.transpose(1, 2).reshape(b, n_q, h * d)


class PostNormLayer(nn.Module):
    """BERT-style post-LN transformer layer, optionally with cross-attention.

    ``x = LN(x + W_o SelfAttn(x))``; with a context: ``x = LN(x + W_o CrossAttn(x, context))``;
    then ``x = LN(x + W_2 GELU(W_1 x))``. GELU is the exact erf form.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp: int,
        eps: float,
        max_positions: int | None = None,
        cross_dim: int | None = None,
    ):
        super().__init__()
        self.self_attn = MultiHeadAttention(dim, heads, max_positions=max_positions)
        self.self_out = nn.Linear(dim, dim)
        self.self_norm = nn.LayerNorm(dim, eps=eps)
        self.cross_attn = self.cross_out = self.cross_norm = None
        if cross_dim is not None:
            self.cross_attn = MultiHeadAttention(dim, heads, kv_dim=cross_dim)
            self.cross_out = nn.Linear(dim, dim)
            self.cross_norm = nn.LayerNorm(dim, eps=eps)
        self.mlp_in = nn.Linear(dim, mlp)
        self.mlp_out = nn.Linear(mlp, dim)
        self.mlp_norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = self.self_norm(x + self.self_out(self.self_attn(x)))
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("this layer cross-attends and needs a context")
            x = self.cross_norm(x + self.cross_out(self.cross_attn(x, context)))
        return self.mlp_norm(x + self.mlp_out(F.gelu(self.mlp_in(x))))


class PreNormLayer(nn.Module):
    """ViT-style pre-LN layer: ``x = x + W_o Attn(LN(x))``; ``x = x + W_2 GELU(W_1 LN(x))``."""

    def __init__(self, dim: int, heads: int, mlp: int, eps: float):
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim, eps=eps)
        self.attn = MultiHeadAttention(dim, heads)
        self.attn_out = nn.Linear(dim, dim)
        self.mlp_norm = nn.LayerNorm(dim, eps=eps)
        self.mlp_in = nn.Linear(dim, mlp)
        self.mlp_out = nn.Linear(mlp, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn_out(self.attn(self.attn_norm(x)))
        return x + self.mlp_out(F.gelu(self.mlp_in(self.mlp_norm(x))))
