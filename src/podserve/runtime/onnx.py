"""``runtime: onnx``: an ONNX Runtime session, from verified bytes.

Manifest options::

    options:
      model: model.onnx             # default
      intra_op_threads: 2           # default: the intra_op_threads setting, else ORT's
      inter_op_threads: 1
      allow_spinning: true          # ORT's default; false lets idle threads sleep (busy hosts)
      instances: 1                  # sessions, each on its own thread with intra_op_threads
      # optional text embedding, as the transformers runtime does it:
      task: embedding
      tokenizer: tokenizer.json
      max_length: 256
      normalize: true
      hidden_output: last_hidden_state   # default: the session's first output

Plain models take the manifest's inputs by name and return its outputs by name. The file is
read once and verified in the same pass; the session is built from those bytes (not from
the path), so what runs is what was checked. Single-file models only (no external data).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from podserve.errors import (
    InferenceError,
    InvalidRequestError,
    ManifestError,
    ModelDirectoryError,
)
from podserve.runtime.loading import VersionReader
from podserve.runtime.memory import is_out_of_memory, oom_error
from podserve.runtime.model import Model
from podserve.runtime.placement import choose_device
from podserve.runtime.text import (
    TextEncoder,
    check_text_input,
    json_reader,
    mean_pool,
    resolve_max_length,
    texts_from,
)
from podserve.v2 import to_numpy_dtype


class OnnxModel(Model):
    """ONNX Runtime inference, optionally with the text embedding task."""

    def load(self) -> None:
        import onnxruntime as ort

        reader = VersionReader(self.version, self.settings, self.report)
        opts = self.manifest.options
        name = opts.get("model", "model.onnx")
        if not isinstance(name, str) or not reader.has(name):
            raise ManifestError(f"invalid field 'options.model': {name!r} not found")
        cuda = "CUDAExecutionProvider" in ort.get_available_providers()
        device = choose_device(self.manifest, self.settings, cuda_count=1 if cuda else 0)
        so = ort.SessionOptions()
        intra = opts.get("intra_op_threads", self.settings.intra_op_threads)
        if intra:
            so.intra_op_num_threads = int(intra)
        if opts.get("inter_op_threads"):
            so.inter_op_num_threads = int(opts["inter_op_threads"])
        if not opts.get("allow_spinning", True):
            # Idle intra-op threads spin by default. That wins on a quiet node (2 threads on 2
            # cores: 342 vs 295 rows/s), but on a node shared with other busy pods sleeping
            # threads leave the CPU to the event loop (docs/benchmarks.md "Hot path").
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers: list[Any] = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            index = int(device[5:]) if ":" in device else 0
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
        count = opts.get("instances", 1)
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 64:
            raise ManifestError(f"invalid field 'options.instances': {count!r}; an int 1..64")
        buf = reader.weights(name)
        try:
            data = buf.data.tobytes()
            self._sessions = [
                ort.InferenceSession(data, so, providers=providers) for _ in range(count)
            ]
            self._session = self._sessions[0]
        except Exception as exc:  # onnxruntime's pybind errors have no common base
            raise ModelDirectoryError(
                f"{buf.path}: ONNX Runtime refused the model: {exc}"
            ) from None
        finally:
            buf.close()
        reader.private("ONNX Runtime copies the initializers into its own buffers")
        self._session_inputs = {i.name for i in self._session.get_inputs()}
        self._task = opts.get("task")
        if self._task not in (None, "embedding"):
            raise ManifestError(f"invalid field 'options.task': {self._task!r}; only embedding")
        if self._task == "embedding":
            self._text = self.inputs[0]
            check_text_input(self._text)
            tok = opts.get("tokenizer", "tokenizer.json")
            if not reader.has(tok):
                raise ManifestError(f"invalid field 'options.tokenizer': {tok} not found")
            read_json = json_reader(reader.has, reader.small)
            self._tokenizer = TextEncoder(
                reader.small(tok),
                resolve_max_length(opts, read_json),
                str(self.version.path / tok),
            )
            self._hidden = opts.get("hidden_output") or self._session.get_outputs()[0].name
            self._normalize = bool(opts.get("normalize", False))
        reader.finish(device)
        self.report.details["providers"] = self._session.get_providers()

    def instances(self) -> list[Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]]:
        return [functools.partial(self._infer_on, s) for s in self._sessions]

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._infer_on(self._session, inputs)

    def _infer_on(self, session: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._task == "embedding":
            return self._embed(session, inputs)
        feed = {}
        for spec in self.inputs:
            arr = inputs.get(spec.name)
            if arr is None:
                raise InvalidRequestError(f"input '{spec.name}' is required")
            feed[spec.name] = arr
        names = [o.name for o in self.outputs]
        results = self._run(session, names, feed)
        return {
            spec.name: np.asarray(value).astype(to_numpy_dtype(spec.datatype), copy=False)
            for spec, value in zip(self.outputs, results, strict=True)
        }

    def _embed(self, session: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        array = inputs.get(self._text.name)
        if array is None:
            raise InvalidRequestError(f"input '{self._text.name}' is required")
        texts, lead = texts_from(array, self._text)
        out = self.outputs[0]
        if not texts:
            return {out.name: np.zeros((*lead, *out.shape), np.float32)}
        enc = self._tokenizer.encode(texts)
        feed = {k: v for k, v in enc.items() if k in self._session_inputs}
        (hidden,) = self._run(session, [self._hidden], feed)
        pooled = mean_pool(np.asarray(hidden), enc["attention_mask"], self._normalize)
        return {out.name: pooled.reshape(*lead, pooled.shape[-1])}

    def _run(self, session: Any, names: list[str], feed: dict[str, np.ndarray]) -> list[Any]:
        try:
            return list(session.run(names, feed))
        except Exception as exc:  # translated here: nothing above sees onnxruntime's types
            if is_out_of_memory(exc):  # arena / CUDA allocation failure: the batcher splits
                raise oom_error(exc, self.version.name) from None
            kind = type(exc).__name__
            if kind in ("InvalidArgument", "InvalidGraph"):
                raise InvalidRequestError(f"{self.version.name}: {exc}") from None
            raise InferenceError(f"{self.version.name}: {kind}: {exc}") from None

    def unload(self) -> None:
        self._session = None
        self._sessions = []
