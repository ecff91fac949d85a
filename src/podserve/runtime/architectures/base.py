"""What every lean architecture offers: explicit pieces a pipeline can split.

A :class:`LayeredModel` is built from a Hugging Face ``config.json`` and a state dict whose
names are those of the HF checkpoint (a prefix such as ``bert.`` or ``transformer.`` is
stripped). It is constructed on the ``meta`` device and the given tensors are *assigned*, so
loading copies nothing and allocates nothing: the parameters are the views over the verified
weight buffer (:mod:`podserve.runtime.safetensors_view`).

A stage of a pipeline builds one with only some layers (``layers=range(4, 8)``,
``embeddings=False``) and the tensors :meth:`LayeredModel.select_tensors` names::

    names = Bert.select_tensors(header.tensors, layers=range(4, 8), embeddings=False)
    stage = Bert.from_tensors(config, header.view(buf, names, offset=off),
                              layers=range(4, 8), embeddings=False, head=True)
    hidden = stage.run_layers(hidden, attention_mask, 4, 8)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Self

import torch
from torch import nn

from podserve.errors import ModelDirectoryError


class UnsupportedConfigError(ModelDirectoryError):
    """The config asks for a variant the lean implementation does not have."""


class LayeredModel(nn.Module):
    """Embeddings, N identical layers, a final step and a pooled representation."""

    #: HF ``model_type`` values and ``architectures`` class names this class can load.
    MODEL_TYPES: ClassVar[frozenset[str]] = frozenset()
    HF_CLASSES: ClassVar[frozenset[str]] = frozenset()
    #: Prefixes HF task models put before the base model's names.
    PREFIXES: ClassVar[tuple[str, ...]] = ()
    #: Names the layer's tensors start with, followed by the layer index and a dot.
    LAYER_PREFIX: ClassVar[str] = ""
    #: Names of the embeddings' and the head's tensors (prefix match).
    EMBEDDING_PREFIXES: ClassVar[tuple[str, ...]] = ()
    HEAD_PREFIXES: ClassVar[tuple[str, ...]] = ()
    #: Names found in checkpoints that are not weights (buffers, MLM heads): dropped.
    IGNORED: ClassVar[re.Pattern[str]] = re.compile(r"$^")

    num_layers: int
    layer_range: range

    # --- the pieces ---------------------------------------------------------------------

    def embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError

    def layer(self, i: int) -> nn.Module:
        """Layer ``i`` (global index); called as ``layer(hidden, bias)``."""
        return self.get_submodule(f"{self.LAYER_PREFIX}{i}")

    def attention_bias(self, attention_mask: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """The additive attention bias every layer adds to its scores."""
        raise NotImplementedError

    def run_layers(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        start: int | None = None,
        stop: int | None = None,
    ) -> torch.Tensor:
        """Layers ``start`` (default: first loaded) to ``stop`` (exclusive, default: last)."""
        start = self.layer_range.start if start is None else start
        stop = self.layer_range.stop if stop is None else stop
        bias = self.attention_bias(attention_mask, hidden)
        for i in range(start, stop):
            hidden = self.layer(i)(hidden, bias)
        return hidden

    def final(self, hidden: torch.Tensor) -> torch.Tensor:
        """What follows the last layer to give HF's ``last_hidden_state``."""
        return hidden

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """One vector per sequence, as the architecture's task heads use it."""
        raise NotImplementedError

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        """Classification logits from ``pool``'s output (checkpoints with a classifier)."""
        raise NotImplementedError(f"{type(self).__name__} was loaded without a classifier head")

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """HF's ``last_hidden_state``."""
        hidden = self.embed(input_ids, attention_mask, token_type_ids)
        return self.final(self.run_layers(hidden, attention_mask))

    # --- construction -------------------------------------------------------------------

    @classmethod
    def supports(cls, config: Mapping[str, Any]) -> bool:
        """Whether ``config`` names this family and a head this class implements."""
        if config.get("model_type") not in cls.MODEL_TYPES:
            return False
        classes = config.get("architectures") or []
        return all(c in cls.HF_CLASSES for c in classes)

    @classmethod
    def build(
        cls,
        config: Mapping[str, Any],
        layers: range,
        embeddings: bool,
        head: bool,
        names: Iterable[str],
    ) -> Self:
        """Construct the (meta-device) modules; ``names`` are the available tensors."""
        if not cls.supports(config):
            raise UnsupportedConfigError(f"config not supported by {cls.__name__}: {config}")
        return cls._construct(dict(config), layers, embeddings, head, set(names))

    @classmethod
    def _construct(
        cls, cfg: dict[str, Any], layers: range, embeddings: bool, head: bool, names: set[str]
    ) -> Self:
        """The architecture's own constructor call, once ``supports`` has passed."""
        raise NotImplementedError

    @classmethod
    def canonical(cls, name: str) -> str | None:
        """A checkpoint tensor name as this module names it; None when it is ignored."""
        for prefix in cls.PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
                break
        name = name.replace("LayerNorm.gamma", "LayerNorm.weight")
        name = name.replace("LayerNorm.beta", "LayerNorm.bias")
        return None if cls.IGNORED.search(name) else name

    @classmethod
    def select_tensors(
        cls,
        names: Iterable[str],
        *,
        layers: range,
        embeddings: bool = True,
        head: bool = True,
    ) -> list[str]:
        """The checkpoint names a model with these parts needs (for partial reads)."""
        wanted: list[str] = []
        for name in names:
            canon = cls.canonical(name)
            if canon is None:
                continue
            if canon.startswith(cls.LAYER_PREFIX):
                index = int(canon[len(cls.LAYER_PREFIX) :].split(".", 1)[0])
                keep = index in layers
            elif canon.startswith(cls.EMBEDDING_PREFIXES):
                keep = embeddings
            else:
                keep = head and canon.startswith(cls.HEAD_PREFIXES)
            if keep:
                wanted.append(name)
        return wanted

    @classmethod
    def from_tensors(
        cls,
        config: Mapping[str, Any],
        tensors: Mapping[str, torch.Tensor],
        *,
        layers: range | None = None,
        embeddings: bool = True,
        head: bool = True,
        where: str = "weights",
    ) -> Self:
        """Build with ``tensors`` assigned as parameters (no copies); strict on names."""
        total = int(config.get("num_hidden_layers") or config.get("n_layer") or 0)
        layers = range(total) if layers is None else layers
        selected = set(cls.select_tensors(tensors, layers=layers, embeddings=embeddings,
                                          head=head))  # fmt: skip
        state: dict[str, torch.Tensor] = {}
        for name, tensor in tensors.items():
            canon = cls.canonical(name)
            if canon is not None and name in selected:
                state[canon] = tensor
        model = cls.build(config, layers, embeddings, head, state)
        expected = set(model.state_dict())
        missing = sorted(expected - set(state))
        extra = sorted(set(state) - expected)
        if missing or extra:
            raise ModelDirectoryError(
                f"{where}: weights do not match the {cls.__name__} architecture "
                f"(missing {missing[:5]}, unexpected {extra[:5]})"
            )
        try:
            model.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:  # shape mismatches; names were checked above
            detail = str(exc).split("\n\t", 1)[-1].strip()
            raise ModelDirectoryError(f"{where}: {detail}") from None
        model.num_layers = total
        model.layer_range = layers
        model.eval()
        return model.requires_grad_(False)
