"""``runtime: transformers``: a Hugging Face model directory on the volume, offline.

Manifest options::

    options:
      task: embedding              # or sequence-classification
      normalize: true              # embedding: L2-normalise (sentence-transformers' Normalize)
      pooling: mean                # embedding: mean over the attention mask, or cls
      max_length: 256              # default: sentence_bert_config.json, else the model's limit
      tokenizer: tokenizer.json
      implementation: auto         # auto | lean | transformers

``embedding`` takes one BYTES sentence per item and returns FP32 ``[n, hidden]``.
``sequence-classification`` returns logits for every output except one named
``probabilities`` (softmax; sigmoid for multi-label configs).

Weights (``model.safetensors``, sharded via ``model.safetensors.index.json``, or
``pytorch_model.bin`` only with ``allow_torch_load``) are read once and verified in the same
pass; tensors are views of that buffer. When the config's family has a lean implementation
(:mod:`podserve.runtime.architectures`) transformers is not even imported; otherwise
``transformers`` builds the model from the state dict loaded here, so nothing is read twice
or unverified.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from podserve.errors import (
    InferenceError,
    InvalidRequestError,
    ManifestError,
    ModelDirectoryError,
    ResourceExhaustedError,
)
from podserve.runtime.architectures import find_architecture
from podserve.runtime.loading import VersionReader
from podserve.runtime.memory import is_out_of_memory, oom_error
from podserve.runtime.model import Model
from podserve.runtime.placement import choose_device
from podserve.runtime.state_dict import read_state_dict
from podserve.runtime.text import (
    TextEncoder,
    check_text_input,
    json_reader,
    resolve_max_length,
    texts_from,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from podserve.storage.reader import WeightBuffer

TASKS = ("embedding", "sequence-classification")
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"


class TransformersModel(Model):
    """Encoders from a HF directory: sentence embeddings or sequence classification."""

    def load(self) -> None:
        reader = VersionReader(self.version, self.settings, self.report)
        opts = self.manifest.options
        task = opts.get("task", "embedding")
        if task not in TASKS:
            raise ManifestError(f"invalid field 'options.task': {task!r}; one of {TASKS}")
        self._task = task
        self._text = self.inputs[0]
        check_text_input(self._text)
        device = choose_device(self.manifest, self.settings)
        if self.settings.intra_op_threads:
            torch.set_num_threads(self.settings.intra_op_threads)
        read_json = json_reader(reader.has, reader.small)
        config = read_json("config.json")
        if config is None:
            raise ManifestError(f"{self.version.path}: config.json missing (not a HF model dir)")
        self._buffers, tensors = _read_state_dict(self, reader)
        self._forward = self._build(config, tensors, opts.get("implementation", "auto"), reader)
        self._device = torch.device(device)
        if device != "cpu":
            self._module.to(self._device)
            reader.private(f"weights copied to {device}")
        tokenizer_name = opts.get("tokenizer", "tokenizer.json")
        if not reader.has(tokenizer_name):
            raise ManifestError(f"invalid field 'options.tokenizer': {tokenizer_name} not found")
        self._tokenizer = TextEncoder(
            reader.small(tokenizer_name),
            resolve_max_length(opts, read_json),
            str(self.version.path / tokenizer_name),
        )
        self._normalize = bool(opts.get("normalize", False))
        self._pooling = opts.get("pooling", "mean")
        if self._pooling not in ("mean", "cls"):
            raise ManifestError("invalid field 'options.pooling': mean or cls")
        self._multi_label = config.get("problem_type") == "multi_label_classification"
        reader.finish(device)
        self.report.details["tensors"] = len(tensors)

    def _build(
        self,
        config: dict[str, Any],
        tensors: dict[str, torch.Tensor],
        implementation: str,
        reader: VersionReader,
    ) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
        """The model and a function from tokenised inputs to hidden states or logits."""
        where = str(self.version.path)
        arch = find_architecture(config) if implementation != "transformers" else None
        if implementation == "lean" and arch is None:
            raise ManifestError(
                f"invalid field 'options.implementation': no lean implementation of "
                f"model_type {config.get('model_type')!r} {config.get('architectures')}"
            )
        if arch is not None:
            lean = arch.from_tensors(config, tensors, where=where)
            self._module: torch.nn.Module = lean
            self.report.details["implementation"] = f"lean:{arch.__name__}"
            if self._task == "embedding":
                return lambda enc: lean(**enc)
            if getattr(lean, "classifier", None) is None:
                raise ManifestError(
                    f"{where}: task sequence-classification needs a checkpoint with a "
                    f"classifier head (architectures: {config.get('architectures')})"
                )
            return lambda enc: lean.head(lean.pool(lean(**enc), enc["attention_mask"]))
        hf = _transformers_module(config, tensors, self._task, where)
        self._module = hf
        reader.private("transformers copies the state dict into its own parameters")
        self.report.details["implementation"] = f"transformers:{type(hf).__name__}"
        if self._task == "embedding":
            return lambda enc: hf(**enc).last_hidden_state
        return lambda enc: hf(**enc).logits

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        array = inputs.get(self._text.name)
        if array is None:
            raise InvalidRequestError(f"input '{self._text.name}' is required")
        texts, lead = texts_from(array, self._text)
        if not texts:
            return {o.name: np.zeros((*lead, *o.shape), np.float32) for o in self.outputs}
        enc = {
            k: torch.from_numpy(v).to(self._device)
            for k, v in self._tokenizer.encode(texts).items()
        }
        try:
            with torch.inference_mode():
                result = self._forward(enc)
                if self._task == "embedding":
                    return {self.outputs[0].name: self._pool(result, enc["attention_mask"], lead)}
                return self._classify(result, lead)
        except torch.OutOfMemoryError as exc:
            raise ResourceExhaustedError(
                f"out of memory running {len(texts)} items: {exc}"
            ) from None
        except RuntimeError as exc:
            if is_out_of_memory(exc):  # e.g. the CPU allocator's RuntimeError
                raise oom_error(exc, self.version.name) from None
            raise InferenceError(f"{self.version.name}: inference failed: {exc}") from None

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor, lead: tuple[int, ...]) -> np.ndarray:
        if self._pooling == "cls":
            pooled = hidden[:, 0]
        else:
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
        if self._normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
        out = pooled.float().cpu().numpy()
        return out.reshape(*lead, out.shape[-1])

    def _classify(self, logits: torch.Tensor, lead: tuple[int, ...]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for spec in self.outputs:
            values = logits
            if spec.name == "probabilities":
                values = logits.sigmoid() if self._multi_label else logits.softmax(dim=-1)
            arr = values.float().cpu().numpy()
            out[spec.name] = arr.reshape(*lead, arr.shape[-1])
        return out

    def unload(self) -> None:
        self._module = torch.nn.Module()
        for buf in getattr(self, "_buffers", []):
            buf.close()
        self._buffers = []


def _read_state_dict(
    model: Model, reader: VersionReader
) -> tuple[list[WeightBuffer], dict[str, torch.Tensor]]:
    """Every weight tensor as a view of its file's verified buffer."""
    if reader.has(SAFETENSORS_INDEX):
        index = json.loads(reader.small(SAFETENSORS_INDEX))
        shards = sorted(set((index.get("weight_map") or {}).values()))
    elif reader.has(SAFETENSORS):
        shards = [SAFETENSORS]
    elif reader.has(TORCH_BIN) and model.manifest.allow_torch_load:
        shards = [TORCH_BIN]
    else:
        raise ModelDirectoryError(
            f"{model.version.path}: no {SAFETENSORS} (or {SAFETENSORS_INDEX}) found"
        )
    return read_state_dict(reader, shards)


def _transformers_module(
    config: dict[str, Any], tensors: dict[str, torch.Tensor], task: str, where: str
) -> torch.nn.Module:
    """Fallback for families without a lean implementation (imports transformers, ~2 s)."""
    try:
        import transformers
    except ImportError:
        raise ModelDirectoryError(
            f"{where}: model_type {config.get('model_type')!r} needs the transformers package "
            "(pip install 'podserve[transformers]')"
        ) from None
    cfg = dict(config)
    model_type = cfg.pop("model_type", None)
    try:
        hf_config = transformers.AutoConfig.for_model(model_type, **cfg)
        mapping = (
            transformers.MODEL_MAPPING
            if task == "embedding"
            else transformers.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING
        )
        found: Any = mapping[type(hf_config)]
        model_class: Any = next(c for c in found if c) if isinstance(found, tuple) else found
        # pretrained path None + state_dict: transformers reads no file itself.
        module, info = model_class.from_pretrained(
            None, config=hf_config, state_dict=tensors, output_loading_info=True
        )
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        raise ModelDirectoryError(
            f"{where}: transformers could not build the model: {exc}"
        ) from None
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise ModelDirectoryError(
            f"{where}: weights missing for {type(module).__name__}: {missing[:5]} "
            "(a checkpoint of another architecture or task?)"
        )
    module.eval()
    result: torch.nn.Module = module
    return result
