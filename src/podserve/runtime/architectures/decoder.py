"""A GPT-2-style decoder (causal self-attention, pre-LayerNorm) in plain torch.

It loads GPT-2 checkpoints (``model_type: gpt2``; HF's ``Conv1D`` weights are ``[in, out]``)
and synthetic ones written by :func:`write_random_decoder`, which benchmarks and tests use to
make a model of any size (e.g. 10 layers x 2048 hidden ≈ 2 GB) without downloading one. It
gives the pipeline splitter a second architecture with the same layer API as BERT.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

import torch
import torch.nn.functional as F
from torch import nn

from podserve.runtime.architectures.base import LayeredModel
from podserve.runtime.architectures.bert import ACTIVATIONS
from podserve.runtime.architectures.layers import Conv1D, Embedding, LayerNorm
from podserve.runtime.safetensors_view import write_safetensors


class _Attn(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.c_attn = Conv1D(d, 3 * d)
        self.c_proj = Conv1D(d, d)


class _MLP(nn.Module):
    def __init__(self, d: int, inner: int) -> None:
        super().__init__()
        self.c_fc = Conv1D(d, inner)
        self.c_proj = Conv1D(inner, d)


class DecoderBlock(nn.Module):
    """x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, d: int, heads: int, inner: int, eps: float, act: str) -> None:
        super().__init__()
        self.heads = heads
        self.act = ACTIVATIONS[act]
        self.ln_1 = LayerNorm(d, eps)
        self.attn = _Attn(d)
        self.ln_2 = LayerNorm(d, eps)
        self.mlp = _MLP(d, inner)

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, s, d = hidden.shape
        q, k, v = self.attn.c_attn(self.ln_1(hidden)).split(d, dim=2)

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, s, self.heads, d // self.heads).transpose(1, 2)

        ctx = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=bias)
        hidden = hidden + self.attn.c_proj(ctx.transpose(1, 2).reshape(b, s, d))
        out: torch.Tensor = hidden + self.mlp.c_proj(self.act(self.mlp.c_fc(self.ln_2(hidden))))
        return out


class Decoder(LayeredModel):
    """GPT-2 base model (``wte``, ``wpe``, ``h.N``, ``ln_f``)."""

    MODEL_TYPES: ClassVar[frozenset[str]] = frozenset({"gpt2", "podserve-decoder"})
    HF_CLASSES: ClassVar[frozenset[str]] = frozenset({"GPT2Model", "GPT2LMHeadModel"})
    PREFIXES: ClassVar[tuple[str, ...]] = ("transformer.",)
    LAYER_PREFIX: ClassVar[str] = "h."
    EMBEDDING_PREFIXES: ClassVar[tuple[str, ...]] = ("wte.", "wpe.")
    HEAD_PREFIXES: ClassVar[tuple[str, ...]] = ("ln_f.",)
    # Causal-mask buffers of old checkpoints; the LM head is tied to wte.
    IGNORED: ClassVar[re.Pattern[str]] = re.compile(r"(^h\.\d+\.attn\.(masked_)?bias$|^lm_head\.)")

    wte: Embedding | None
    wpe: Embedding | None
    ln_f: LayerNorm | None

    @classmethod
    def supports(cls, config: Mapping[str, Any]) -> bool:
        return (
            super().supports(config)
            and config.get("activation_function", "gelu_new") in ACTIVATIONS
            and not config.get("add_cross_attention", False)
        )

    @classmethod
    def _construct(
        cls, cfg: dict[str, Any], layers: range, embeddings: bool, head: bool, names: set[str]
    ) -> Self:
        return cls(cfg, layers, embeddings, head)

    def __init__(self, cfg: dict[str, Any], layers: range, embeddings: bool, head: bool) -> None:
        super().__init__()
        d = cfg["n_embd"]
        eps = cfg.get("layer_norm_epsilon", 1e-5)
        inner = cfg.get("n_inner") or 4 * d
        act = cfg.get("activation_function", "gelu_new")
        self.wte = Embedding(cfg["vocab_size"], d) if embeddings else None
        self.wpe = Embedding(cfg["n_positions"], d) if embeddings else None
        self.h = nn.ModuleDict(
            {str(i): DecoderBlock(d, cfg["n_head"], inner, eps, act) for i in layers}
        )
        self.ln_f = LayerNorm(d, eps) if head else None
        self.num_layers = cfg["n_layer"]
        self.layer_range = layers

    def embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.wte is None or self.wpe is None:
            raise RuntimeError("this model was loaded without its embeddings")
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        out: torch.Tensor = self.wte(input_ids) + self.wpe(positions)[None]
        return out

    def attention_bias(self, attention_mask: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        s = hidden.shape[1]
        causal = torch.ones(s, s, dtype=torch.bool, device=hidden.device).tril()
        allowed = causal[None, None] & attention_mask[:, None, None, :].bool()
        zero = torch.zeros((), dtype=hidden.dtype, device=hidden.device)
        return torch.where(allowed, zero, torch.finfo(hidden.dtype).min)

    def final(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.ln_f is None:
            raise RuntimeError("this model was loaded without its final LayerNorm")
        out: torch.Tensor = self.ln_f(hidden)
        return out

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The final hidden state of each sequence's last real token (right padding)."""
        last = attention_mask.long().sum(dim=1).clamp(min=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def decoder_config(
    layers: int, hidden: int, *, heads: int | None = None, vocab: int = 1024, positions: int = 512
) -> dict[str, Any]:
    """A GPT-2-style ``config.json`` for a synthetic decoder."""
    return {
        "model_type": "podserve-decoder",
        "architectures": ["GPT2Model"],
        "n_layer": layers,
        "n_embd": hidden,
        "n_head": heads or max(1, hidden // 64),
        "vocab_size": vocab,
        "n_positions": positions,
        "layer_norm_epsilon": 1e-5,
        "activation_function": "gelu_new",
    }


def write_random_decoder(
    directory: Path,
    *,
    layers: int,
    hidden: int,
    heads: int | None = None,
    vocab: int = 1024,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """Write ``model.safetensors`` + ``config.json`` of a random decoder; returns the config.

    Size ≈ layers x 12 x hidden² x itemsize (10 x 2048² fp32 ≈ 2 GB). Written one tensor at
    a time, so memory stays at one layer's largest matrix.
    """
    cfg = decoder_config(layers, hidden, heads=heads, vocab=vocab)
    d, inner = hidden, 4 * hidden
    specs: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {
        "wte.weight": (dtype, (vocab, d)),
        "wpe.weight": (dtype, (cfg["n_positions"], d)),
    }
    for i in range(layers):
        p = f"h.{i}."
        specs |= {
            p + "ln_1.weight": (dtype, (d,)), p + "ln_1.bias": (dtype, (d,)),
            p + "attn.c_attn.weight": (dtype, (d, 3 * d)),
            p + "attn.c_attn.bias": (dtype, (3 * d,)),
            p + "attn.c_proj.weight": (dtype, (d, d)), p + "attn.c_proj.bias": (dtype, (d,)),
            p + "ln_2.weight": (dtype, (d,)), p + "ln_2.bias": (dtype, (d,)),
            p + "mlp.c_fc.weight": (dtype, (d, inner)), p + "mlp.c_fc.bias": (dtype, (inner,)),
            p + "mlp.c_proj.weight": (dtype, (inner, d)), p + "mlp.c_proj.bias": (dtype, (d,)),
        }  # fmt: skip
    specs |= {"ln_f.weight": (dtype, (d,)), "ln_f.bias": (dtype, (d,))}
    gen = torch.Generator().manual_seed(seed)
    std = 0.02 / math.sqrt(2 * layers)

    def fill(name: str) -> torch.Tensor:
        shape = specs[name][1]
        if ".ln_" in name or name.startswith("ln_f"):
            return torch.ones(shape) if name.endswith("weight") else torch.zeros(shape)
        if name.endswith(".bias"):
            return torch.zeros(shape)
        return torch.randn(shape, generator=gen) * (std if "c_proj" in name else 0.02)

    directory.mkdir(parents=True, exist_ok=True)
    write_safetensors(directory / "model.safetensors", specs, fill, {"format": "pt"})
    (directory / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    return cfg
