"""The split forward equals the whole model (podserve.tensor_parallel.sharded).

Two ranks run as two threads of this process, each with its own gloo process group over a
real TCPStore, so the all-reduces (podserve.tensor_parallel.steps.reducer: an exchange of
the partial sums) are the real ones; tests/tensor_parallel/test_ranks.py does
the same with two processes.
"""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from podserve.runtime.architectures import find_architecture
from podserve.runtime.safetensors_view import load_tensors
from podserve.storage.repository import ModelRepository
from podserve.tensor_parallel.sharded import build_sharded, sharded_forward
from podserve.tensor_parallel.split import split_tensor_parallel
from podserve.tensor_parallel.steps import reducer
from podserve.tensor_parallel.weights import read_rank_weights


def run_ranks(root: Path, name: str, k: int, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    plan = split_tensor_parallel(root, name, None, k)
    version = ModelRepository(root).open(name)
    config = json.loads((version.path / "config.json").read_text())
    arch = find_architecture(config)
    assert arch is not None
    store = dist.TCPStore("127.0.0.1", 0, None, True, timeout=timedelta(seconds=30))
    results: list[torch.Tensor | BaseException] = [RuntimeError("no result")] * k

    def rank(r: int) -> None:
        try:
            own = dist.TCPStore("127.0.0.1", store.port, None, False, timeout=timedelta(seconds=30))
            pg = dist.ProcessGroupGloo(dist.PrefixStore("t", own), r, k, timedelta(seconds=30))
            weights = read_rank_weights(version, plan, r, verify=True)
            model = build_sharded(arch, config, weights.tensors, str(version.path))
            with torch.inference_mode():
                results[r] = sharded_forward(model, reducer(pg, r, k), k, **batch)
        except BaseException as exc:
            results[r] = exc

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(k)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for res in results:
        if isinstance(res, BaseException):
            raise res
    return results  # type: ignore[return-value]


def whole(root: Path, name: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    version = ModelRepository(root).open(name)
    config = json.loads((version.path / "config.json").read_text())
    arch = find_architecture(config)
    assert arch is not None
    path = version.path / "model.safetensors"
    model = arch.from_tensors(config, load_tensors(bytearray(path.read_bytes()), str(path)))
    with torch.inference_mode():
        out: torch.Tensor = model(**batch)
        return out


def tokens(batch: int, seq: int, vocab: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(batch)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    mask[0, seq // 2 :] = 0  # padding in one row
    return {
        "input_ids": torch.randint(2, vocab, (batch, seq), generator=gen),
        "attention_mask": mask,
        "token_type_ids": torch.zeros(batch, seq, dtype=torch.int64),
    }


@pytest.mark.parametrize(
    ("name", "k", "batch"),
    [("decoder", 2, 3), ("minilm", 2, 5), ("minilm", 3, 1), ("minilm", 4, 2)],
)
def test_k_ranks_equal_the_whole_model(tp_root: Path, name: str, k: int, batch: int) -> None:
    inputs = tokens(batch, 11, 1000)
    expected = whole(tp_root, name, inputs)
    outs = run_ranks(tp_root, name, k, inputs)
    for out in outs:  # every rank ends with the full state, the same to the bit
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
        assert torch.equal(out, outs[0])
