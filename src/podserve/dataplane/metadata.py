"""What the data plane says about itself and its models, in Triton's shapes: server and model
metadata, per-model statistics and the repository index."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

from podserve import __version__
from podserve.dataplane.models import ServedModel
from podserve.errors import ModelNotReadyError, PodserveError
from podserve.storage.manifest import TensorSpec
from podserve.storage.repository import ModelRepository

EXTENSIONS = ["binary_tensor_data", "model_repository", "statistics", "parameters"]


def server_metadata() -> dict[str, Any]:
    return {"name": "podserve", "version": __version__, "extensions": EXTENSIONS}


def model_metadata(served: ServedModel) -> dict[str, Any]:
    """``/v2/models/{m}``: tensors with the batch dimension, platform, state, device, plan."""
    if served.manifest is None:
        raise ModelNotReadyError(served.not_ready_message())
    m = served.manifest
    batch = [-1] if m.max_batch_size > 0 else []

    def spec(t: TensorSpec) -> dict[str, Any]:
        return {"name": t.name, "datatype": t.datatype, "shape": batch + list(t.shape)}

    meta: dict[str, Any] = {
        "name": served.name,
        "versions": [served.version],
        "platform": f"podserve_{m.runtime}",
        "inputs": [spec(t) for t in m.inputs],
        "outputs": [spec(t) for t in m.outputs],
        "parameters": {
            "max_batch_size": m.max_batch_size,
            "batch_cap": served.batcher.batch_cap if served.batcher else 0,
            "state": served.state,
        },
    }
    if served.batcher is not None and served.batcher.batched:
        b = served.batcher
        meta["parameters"]["batching_policy"] = b.policy
        meta["parameters"]["batch_ms"] = {
            str(rows): round(s * 1e3, 3) for rows, s in b.curve.points().items()
        }
    if served.model is not None:
        meta["parameters"]["verified"] = served.model.report.verified
        meta["parameters"]["device"] = served.model.report.device
        signer = served.model.version.signer
        meta["parameters"]["signed_by"] = signer.describe() if signer else ""
        meta["parameters"]["weights"] = served.model.report.weights
        why = served.model.report.details.get("weights_private_because")
        if why:
            meta["parameters"]["weights_private_because"] = why
    meta["parameters"].update(served.extra_metadata)
    return meta


def model_stats(models: Iterable[ServedModel]) -> list[dict[str, Any]]:
    """Triton-style statistics (``/v2/models/{m}/stats``), from each model's batcher."""
    out = []
    for served in models:
        st = served.batcher.stats if served.batcher else None
        out.append(
            {
                "name": served.name,
                "version": served.version or "",
                "state": served.state,
                "inference_count": st.inference_count if st else 0,
                "execution_count": st.execution_count if st else 0,
                "inference_stats": {
                    "success": {"count": st.success if st else 0},
                    "fail": {"count": st.fail if st else 0},
                    "queue": {"count": st.success if st else 0, "ns": st.queue_ns if st else 0},
                    "compute_infer": {
                        "count": st.execution_count if st else 0,
                        "ns": st.compute_ns if st else 0,
                    },
                },
                "batch_stats": [
                    {"batch_size": size, "compute_infer": {"count": count}}
                    for size, count in sorted((st.batch_sizes if st else {}).items())
                ],
            }
        )
    return out


def repository_index(
    models: dict[str, ServedModel], repository: ModelRepository
) -> list[dict[str, Any]]:
    """Every served model with its state, plus the repository's models not served."""
    names = set(models)
    with contextlib.suppress(PodserveError):
        names.update(repository.models())
    index = []
    for name in sorted(names):
        served = models.get(name)
        entry: dict[str, Any] = {"name": name}
        if served is not None:
            entry.update(
                {
                    "version": served.version or "",
                    "state": served.state.upper(),
                    "reason": served.reason,
                }
            )
        index.append(entry)
    return index
