"""Lean torch implementations of model families, chosen by a HF ``config.json``.

The transformers runtime uses one of these when the config's ``model_type`` is listed in
:data:`ARCHITECTURES` and its ``architectures`` (HF class names) are ones the class
implements; otherwise it falls back to ``transformers``. The lean path skips importing
transformers (about 2 s of cold start) and assigns the verified weight views as parameters.

Adding an architecture:

1. write ``podserve/runtime/architectures/<family>.py`` with a :class:`LayeredModel` subclass
   whose module names mirror the HF checkpoint (set ``MODEL_TYPES``, ``HF_CLASSES``,
   ``PREFIXES``, ``LAYER_PREFIX``, ``EMBEDDING_PREFIXES``, ``HEAD_PREFIXES``; implement
   ``build``, ``embed``, ``attention_bias``, ``pool`` and, when it has a stack-closing norm,
   ``final``);
2. add ``"<model_type>": "podserve.runtime.architectures.<family>:<Class>"`` below;
3. add a test comparing it with the transformers class at 1e-5
   (``tests/runtime/test_architectures.py``).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from podserve.runtime.architectures.base import LayeredModel, UnsupportedConfigError

#: HF ``model_type`` → "module:Class" (imported only when used).
ARCHITECTURES: dict[str, str] = {
    "bert": "podserve.runtime.architectures.bert:Bert",
    "gpt2": "podserve.runtime.architectures.decoder:Decoder",
    "podserve-decoder": "podserve.runtime.architectures.decoder:Decoder",
}

__all__ = ["ARCHITECTURES", "LayeredModel", "UnsupportedConfigError", "find_architecture"]


def find_architecture(config: Mapping[str, Any]) -> type[LayeredModel] | None:
    """The lean class for this config, or None when transformers is needed."""
    target = ARCHITECTURES.get(str(config.get("model_type")))
    if target is None:
        return None
    module, _, name = target.partition(":")
    cls: type[LayeredModel] = getattr(importlib.import_module(module), name)
    return cls if cls.supports(config) else None
