"""A lean architecture holding one rank's slices, and its layers' tensor-parallel forward.

The model is the architecture's own class (:mod:`podserve.runtime.architectures`), built on
the meta device, with each parameter replaced by the rank's slice (a view over the verified
read buffer: nothing is copied). Embeddings, norms and the final step are the class's own
code; the layers run here, with the split tensors and one all-reduce after the attention
output and one after the MLP down-projection::

    ctx   = attention(x @ Wq_r, x @ Wk_r, x @ Wv_r)      # this rank's heads
    attn  = all_reduce(ctx @ Wo_r) + bo                  # Wo_r: its input rows/columns
    h     = act(attn' @ Wup_r + bup_r)                   # its share of the MLP width
    out   = all_reduce(h @ Wdown_r) + bdown
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from podserve.errors import ModelDirectoryError
from podserve.runtime.architectures import LayeredModel
from podserve.runtime.architectures.bert import BertLayer
from podserve.runtime.architectures.decoder import DecoderBlock

Reduce = Callable[[torch.Tensor], torch.Tensor]


def build_sharded(
    arch: type[LayeredModel],
    config: Mapping[str, Any],
    tensors: Mapping[str, torch.Tensor],
    where: str,
) -> LayeredModel:
    """The whole model with this rank's slices as its parameters (strict on names)."""
    total = int(config.get("num_hidden_layers") or config.get("n_layer") or 0)
    state = {}
    for name, tensor in tensors.items():
        canon = arch.canonical(name)
        if canon is not None:
            state[canon] = tensor
    model = arch.build(config, range(total), True, True, state)
    expected = set(model.state_dict())
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or extra:
        raise ModelDirectoryError(
            f"{where}: weights do not match the {arch.__name__} architecture "
            f"(missing {missing[:5]}, unexpected {extra[:5]})"
        )
    for canon, tensor in state.items():
        owner, _, attr = canon.rpartition(".")
        setattr(model.get_submodule(owner), attr, nn.Parameter(tensor, requires_grad=False))
    model.num_layers = total
    model.layer_range = range(total)
    model.eval()
    return model.requires_grad_(False)


def sharded_forward(
    model: LayeredModel,
    reduce: Reduce,
    k: int,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """HF's ``last_hidden_state``, computed by K ranks that each call this on the same input."""
    hidden = model.embed(input_ids, attention_mask, token_type_ids)
    bias = model.attention_bias(attention_mask, hidden)
    for i in model.layer_range:
        layer = model.layer(i)
        if isinstance(layer, BertLayer):
            hidden = _bert_layer(layer, hidden, bias, layer.heads // k, reduce)
        elif isinstance(layer, DecoderBlock):
            hidden = _decoder_block(layer, hidden, bias, layer.heads // k, reduce)
        else:  # pragma: no cover - sharding.RULES names the families handled here
            raise TypeError(f"no tensor-parallel forward for {type(layer).__name__}")
    return model.final(hidden)


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, bias: torch.Tensor
) -> torch.Tensor:
    b, s, width = q.shape

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.view(b, s, heads, width // heads).transpose(1, 2)

    ctx = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=bias)
    return ctx.transpose(1, 2).reshape(b, s, width)


def _bert_layer(
    layer: BertLayer, hidden: torch.Tensor, bias: torch.Tensor, heads: int, reduce: Reduce
) -> torch.Tensor:
    sa = layer.attention.self
    ctx = _attend(sa.query(hidden), sa.key(hidden), sa.value(hidden), heads, bias)
    out = layer.attention.output
    attended = out.LayerNorm(reduce(F.linear(ctx, out.dense.weight)) + out.dense.bias + hidden)
    inner = layer.act(layer.intermediate.dense(attended))
    down = layer.output
    result: torch.Tensor = down.LayerNorm(
        reduce(F.linear(inner, down.dense.weight)) + down.dense.bias + attended
    )
    return result


def _decoder_block(
    layer: DecoderBlock, hidden: torch.Tensor, bias: torch.Tensor, heads: int, reduce: Reduce
) -> torch.Tensor:
    qkv = layer.attn.c_attn(layer.ln_1(hidden))
    q, k, v = qkv.split(qkv.shape[-1] // 3, dim=2)
    ctx = _attend(q, k, v, heads, bias)
    proj = layer.attn.c_proj
    hidden = hidden + reduce(ctx @ proj.weight) + proj.bias
    mlp = layer.mlp
    up = layer.act(mlp.c_fc(layer.ln_2(hidden)))
    out: torch.Tensor = hidden + reduce(up @ mlp.c_proj.weight) + mlp.c_proj.bias
    return out
