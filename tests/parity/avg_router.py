"""The AVG-LLaVA granularity router: text filter, merger layer, scorer, voter and norm.

Written from DESIGN.md section 3. Parameter names mirror the checkpoint under `model.router.`:
`router.{0,2}.{weight,bias}`, `voter` (L_total, 1), `norm.{weight,bias}` and the PyTorch
`TransformerEncoderLayer` names under `merger.`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from avg_anyres import DEFAULT_GRANULARITIES, PATCHES_PER_SIDE, pool

ROUTER_PREFIX = "model.router."
MERGER_HEADS = 8
COSINE_EPS = 1e-8
# Text tokens scored per chunk: keeps the (576, chunk, D) broadcast small at D=4096.
_TEXT_CHUNK = 8


class RouterError(ValueError):
    """Bad input or weights for the router reference."""


def text_scores(base: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Score each text embedding by its mean cosine similarity to the base crop's 576 tokens.

    torch's cosine_similarity semantics: each vector is divided by max(norm, eps) before the dot.
    """
    if base.dim() != 2 or text.dim() != 2 or base.shape[1] != text.shape[1]:
        raise RouterError(f"bad shapes for text scoring: base {tuple(base.shape)}, text {tuple(text.shape)}")
    scores = []
    for start in range(0, text.shape[0], _TEXT_CHUNK):
        chunk = text[start : start + _TEXT_CHUNK]
        sim = F.cosine_similarity(base[:, None, :], chunk[None, :, :], dim=-1, eps=COSINE_EPS)
        scores.append(sim.mean(dim=0))
    return torch.cat(scores) if scores else text.new_zeros(0)


def select_text(base: torch.Tensor, text: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-`keep` text embeddings by score, best first, zero rows after the last real one.

    Returns (selected (keep, D), scores (T_text,), order (min(keep, T_text),) indices into text).
    A stable sort puts equal scores in prompt order; equal scores come from repeated token ids,
    whose rows are identical, so the choice cannot change the output.
    """
    scores = text_scores(base, text)
    order = torch.sort(scores, descending=True, stable=True).indices[:keep]
    selected = text.new_zeros(keep, base.shape[1])
    selected[: order.numel()] = text[order]
    return selected, scores, order


class GranularityRouter(nn.Module):
    """Same parameter names and shapes as the released `model.router`."""

    def __init__(self, hidden: int, granularities: list[int], text_queries: int, heads: int = MERGER_HEADS):
        super().__init__()
        if hidden % heads:
            raise RouterError(f"hidden size {hidden} is not divisible by {heads} heads")
        self.granularities = list(granularities)
        self.text_queries = text_queries
        self.seq_len = sum(self.granularities) + text_queries
        self.merger = nn.TransformerEncoderLayer(
            d_model=hidden, nhead=heads, dim_feedforward=hidden, dropout=0.0, activation="relu"
        )
        self.router = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, len(self.granularities)))
        self.voter = nn.Parameter(torch.zeros(self.seq_len, 1))
        self.norm = nn.LayerNorm(len(self.granularities))
        self.eval()

    @classmethod
    def from_tensors(
        cls,
        tensors: dict[str, torch.Tensor],
        granularities: list[int] = DEFAULT_GRANULARITIES,
        text_queries: int = 32,
        prefix: str = ROUTER_PREFIX,
    ) -> GranularityRouter:
        """Build from checkpoint tensors; every router tensor must be present, nothing extra."""
        own = {k[len(prefix) :]: v.float() for k, v in tensors.items() if k.startswith(prefix)}
        if "router.0.weight" not in own:
            raise RouterError(f"no `{prefix}router.0.weight` in the checkpoint")
        module = cls(own["router.0.weight"].shape[1], granularities, text_queries)
        expected = set(module.state_dict())
        missing, extra = expected - set(own), set(own) - expected
        if missing or extra:
            raise RouterError(f"router tensors: missing {sorted(missing)}, unexpected {sorted(extra)}")
        for name, param in module.state_dict().items():
            if own[name].shape != param.shape:
                raise RouterError(f"{prefix}{name}: shape {tuple(own[name].shape)}, expected {tuple(param.shape)}")
        module.load_state_dict(own)
        return module

    @torch.no_grad()
    def forward(self, features: torch.Tensor, text: torch.Tensor) -> RouterTrace:
        """Route one image: `features` (n_crops, 576, D) projected, unpooled; `text` (T_text, D)."""
        if features.dim() != 3 or features.shape[1] != PATCHES_PER_SIDE**2:
            raise RouterError(f"expected (n_crops, 576, D) image features, got {tuple(features.shape)}")
        selected, scores, order = select_text(features[0], text, self.text_queries)
        pooled = [pool(features, g) for g in self.granularities]
        n = features.shape[0]
        router_input = torch.cat(pooled + [selected.expand(n, -1, -1)], dim=1)
        # Not batch_first: dim 0 (crops) is the sequence, so each of the L_total positions attends
        # only to the same position in the image's other crops.
        merger_out = self.merger(router_input)
        scores_per_token = self.router(merger_out)  # (n, L_total, n_granularities)
        crop_logits = torch.einsum("cke,k->ce", scores_per_token, self.voter[:, 0])
        pre_norm = crop_logits.mean(dim=0)
        logits = self.norm(pre_norm)
        return RouterTrace(
            text_scores=scores,
            text_order=order,
            text_selected=selected,
            router_input=router_input,
            merger_out=merger_out,
            crop_logits=crop_logits,
            pre_norm_logits=pre_norm,
            router_logits=logits,
            index=int(torch.argmax(logits)),
        )


def random_router(
    hidden: int, seed: int, granularities: list[int] = DEFAULT_GRANULARITIES, text_queries: int = 32
) -> GranularityRouter:
    """A router with every parameter random, LayerNorm affines and voter included (for tests)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    router = GranularityRouter(hidden, granularities, text_queries)
    with torch.no_grad():
        for name, param in router.named_parameters():
            if name == "voter":
                param.copy_(torch.randn(param.shape, generator=gen))
            elif "norm" in name and name.endswith("weight"):
                param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=gen))
            elif name.endswith("bias"):
                param.copy_(0.2 * torch.randn(param.shape, generator=gen))
    return router.eval()


@dataclass
class RouterTrace:
    text_scores: torch.Tensor
    text_order: torch.Tensor
    text_selected: torch.Tensor
    router_input: torch.Tensor
    merger_out: torch.Tensor
    crop_logits: torch.Tensor
    pre_norm_logits: torch.Tensor
    router_logits: torch.Tensor
    index: int


def explicit_merger(x: torch.Tensor, params: dict[str, torch.Tensor], heads: int = MERGER_HEADS) -> torch.Tensor:
    """The merger layer written out op by op (post-LN, ReLU, LayerNorm eps 1e-5), as a second check.

    `x` is (S, B, D) with S = crops (the attended axis) and B = positions; `params` uses the
    names under `merger.`.
    """
    s, b, d = x.shape
    head_dim = d // heads
    qkv = x @ params["self_attn.in_proj_weight"].T + params["self_attn.in_proj_bias"]
    q, k, v = qkv.split(d, dim=-1)

    def heads_first(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(s, b, heads, head_dim).permute(1, 2, 0, 3)  # (B, H, S, hd)

    q, k, v = heads_first(q), heads_first(k), heads_first(v)
    weights = torch.softmax((q @ k.transpose(-1, -2)) / head_dim**0.5, dim=-1)
    attn = (weights @ v).permute(2, 0, 1, 3).reshape(s, b, d)
    attn = attn @ params["self_attn.out_proj.weight"].T + params["self_attn.out_proj.bias"]
    h = F.layer_norm(x + attn, (d,), params["norm1.weight"], params["norm1.bias"], eps=1e-5)
    ff = torch.relu(h @ params["linear1.weight"].T + params["linear1.bias"])
    ff = ff @ params["linear2.weight"].T + params["linear2.bias"]
    return F.layer_norm(h + ff, (d,), params["norm2.weight"], params["norm2.bias"], eps=1e-5)
