"""MLServer runtimes for the two models (``implementation: mlserver_models.Identity``).

``run.py`` writes ``settings.json`` and one ``model-settings.json`` per model (adaptive
batching via ``max_batch_size``/``max_batch_time`` when batching is on) and starts
``mlserver start DIR`` with this folder on ``PYTHONPATH``.
"""

from __future__ import annotations

import kernels
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class Identity(MLModel):
    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        out = NumpyCodec.encode_output(kernels.IDENTITY_OUT, x)
        return InferenceResponse(model_name=self.name, id=payload.id, outputs=[out])


class MiniLM(MLModel):
    async def load(self) -> bool:
        self._session = kernels.minilm_session()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feed = {t.name: NumpyCodec.decode_input(t) for t in payload.inputs}
        hidden = kernels.run_minilm(self._session, feed)
        out = NumpyCodec.encode_output(kernels.MINILM_OUT, hidden)
        return InferenceResponse(model_name=self.name, id=payload.id, outputs=[out])
