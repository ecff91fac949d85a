"""BERT encoders (``model_type: bert``: MiniLM, BERT-base, …) in plain torch.

Matches ``transformers.BertModel`` (absolute positions, post-LayerNorm layers) and
``BertForSequenceClassification`` (pooler + classifier) to float rounding, without importing
transformers (about 2 s of every cold start). Module names mirror the HF checkpoint, so its
state dict loads as is.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Self

import torch
import torch.nn.functional as F
from torch import nn

from podserve.runtime.architectures.base import LayeredModel
from podserve.runtime.architectures.layers import Embedding, LayerNorm, Linear

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


class _SelfAttention(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.query = Linear(hidden, hidden)
        self.key = Linear(hidden, hidden)
        self.value = Linear(hidden, hidden)


class _DenseNorm(nn.Module):
    def __init__(self, n_in: int, n_out: int, eps: float) -> None:
        super().__init__()
        self.dense = Linear(n_in, n_out)
        self.LayerNorm = LayerNorm(n_out, eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.LayerNorm(self.dense(x) + residual)
        return out


class _Attention(nn.Module):
    def __init__(self, hidden: int, eps: float) -> None:
        super().__init__()
        self.self = _SelfAttention(hidden)
        self.output = _DenseNorm(hidden, hidden, eps)


class _Intermediate(nn.Module):
    def __init__(self, hidden: int, inner: int) -> None:
        super().__init__()
        self.dense = Linear(hidden, inner)


class BertLayer(nn.Module):
    """Self-attention + feed-forward, each followed by residual and LayerNorm."""

    def __init__(self, hidden: int, heads: int, inner: int, eps: float, act: str) -> None:
        super().__init__()
        self.heads = heads
        self.act = ACTIVATIONS[act]
        self.attention = _Attention(hidden, eps)
        self.intermediate = _Intermediate(hidden, inner)
        self.output = _DenseNorm(inner, hidden, eps)

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, s, d = hidden.shape
        sa = self.attention.self

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, s, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = heads(sa.query(hidden)), heads(sa.key(hidden)), heads(sa.value(hidden))
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        ctx = ctx.transpose(1, 2).reshape(b, s, d)
        attended = self.attention.output(ctx, hidden)
        out: torch.Tensor = self.output(self.act(self.intermediate.dense(attended)), attended)
        return out


class _Embeddings(nn.Module):
    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        d = cfg["hidden_size"]
        self.word_embeddings = Embedding(cfg["vocab_size"], d)
        self.position_embeddings = Embedding(cfg["max_position_embeddings"], d)
        self.token_type_embeddings = Embedding(cfg.get("type_vocab_size", 2), d)
        self.LayerNorm = LayerNorm(d, cfg.get("layer_norm_eps", 1e-12))


class _Encoder(nn.Module):
    def __init__(self, layers: dict[str, nn.Module]) -> None:
        super().__init__()
        self.layer = nn.ModuleDict(layers)


class _Pooler(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.dense = Linear(hidden, hidden)


class Bert(LayeredModel):
    """``BertModel`` / ``BertForSequenceClassification`` with HF's tensor names."""

    MODEL_TYPES: ClassVar[frozenset[str]] = frozenset({"bert"})
    HF_CLASSES: ClassVar[frozenset[str]] = frozenset({"BertModel", "BertForSequenceClassification"})
    PREFIXES: ClassVar[tuple[str, ...]] = ("bert.",)
    LAYER_PREFIX: ClassVar[str] = "encoder.layer."
    EMBEDDING_PREFIXES: ClassVar[tuple[str, ...]] = ("embeddings.",)
    HEAD_PREFIXES: ClassVar[tuple[str, ...]] = ("pooler.", "classifier.")
    IGNORED: ClassVar[re.Pattern[str]] = re.compile(r"^(embeddings\.position_ids|cls\.)")

    embeddings: _Embeddings | None
    pooler: _Pooler | None
    classifier: Linear | None

    @classmethod
    def supports(cls, config: Mapping[str, Any]) -> bool:
        return (
            super().supports(config)
            and config.get("position_embedding_type", "absolute") == "absolute"
            and config.get("hidden_act", "gelu") in ACTIVATIONS
            and not config.get("is_decoder", False)
        )

    @classmethod
    def _construct(
        cls, cfg: dict[str, Any], layers: range, embeddings: bool, head: bool, names: set[str]
    ) -> Self:
        return cls(cfg, layers, embeddings, head, names)

    def __init__(
        self,
        cfg: dict[str, Any],
        layers: range,
        embeddings: bool,
        head: bool,
        names: set[str],
    ) -> None:
        super().__init__()
        d, heads = cfg["hidden_size"], cfg["num_attention_heads"]
        eps = cfg.get("layer_norm_eps", 1e-12)
        self.embeddings = _Embeddings(cfg) if embeddings else None
        self.encoder = _Encoder(
            {str(i): BertLayer(d, heads, cfg["intermediate_size"], eps,
                               cfg.get("hidden_act", "gelu")) for i in layers}
        )  # fmt: skip
        # The pooler and classifier exist only when the checkpoint has them (MiniLM's pooler
        # is present but unused by sentence embeddings; BertModel checkpoints lack classifiers).
        self.pooler = _Pooler(d) if head and "pooler.dense.weight" in names else None
        has_classifier = head and "classifier.weight" in names
        self.classifier = Linear(d, _num_labels(cfg)) if has_classifier else None
        self.num_layers = cfg["num_hidden_layers"]
        self.layer_range = layers

    def embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        emb = self.embeddings
        if emb is None:
            raise RuntimeError("this model was loaded without its embeddings")
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        x = (
            emb.word_embeddings(input_ids)
            + emb.position_embeddings(positions)[None]
            + emb.token_type_embeddings(types)
        )
        out: torch.Tensor = emb.LayerNorm(x)
        return out

    def attention_bias(self, attention_mask: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        mask = attention_mask[:, None, None, :].to(hidden.dtype)
        return (1.0 - mask) * torch.finfo(hidden.dtype).min

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """HF's pooler output: tanh(dense(hidden of [CLS]))."""
        if self.pooler is None:
            raise RuntimeError("this checkpoint has no pooler weights")
        return torch.tanh(self.pooler.dense(hidden[:, 0]))

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        if self.classifier is None:
            return super().head(pooled)
        logits: torch.Tensor = self.classifier(pooled)
        return logits


def _num_labels(cfg: Mapping[str, Any]) -> int:
    if "num_labels" in cfg:
        return int(cfg["num_labels"])
    labels = cfg.get("id2label")
    return len(labels) if labels else 2
