"""``podserve split --tp K`` and the manifest it writes (podserve.tensor_parallel.split)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from podserve.errors import ConfigurationError
from podserve.runtime.safetensors_view import read_header
from podserve.tensor_parallel.manifest import (
    load_tensor_parallel,
    parse_rank,
    parse_tensor_parallel,
)
from podserve.tensor_parallel.split import split_tensor_parallel


def test_minilm_ranks_share_the_layers_and_replicate_the_rest(tp_root: Path) -> None:
    plan = split_tensor_parallel(tp_root, "minilm", None, 2)
    header = read_header(tp_root / "minilm" / "1" / "model.safetensors")
    file_bytes = sum(i.length for n, i in header.tensors.items() if n != "embeddings.position_ids")
    assert (plan.k, plan.heads, plan.model_type) == (2, 12, "bert")
    r0, r1 = plan.ranks
    assert [t.name for t in r0.tensors] == [t.name for t in r1.tensors]
    by_name = {t.name: (a, b) for a, b in zip(r0.tensors, r1.tensors, strict=True) for t in [a]}
    query, _ = by_name["encoder.layer.0.attention.self.query.weight"]
    assert query.shape == (192, 384)
    assert query.reads[0].count == 1  # a row block: one range
    out, out1 = by_name["encoder.layer.0.attention.output.dense.weight"]
    assert out.shape == (384, 192)
    assert out.reads[0].count == 384  # a column block: a piece of each row
    assert out.blake3 != out1.blake3
    word, word1 = by_name["embeddings.word_embeddings.weight"]
    assert word == word1  # replicated: whole, same digest
    assert word.shape == (30522, 384)
    # Each rank reads the replicated tensors and half of the split ones.
    replicated = sum(a.length for a, b in by_name.values() if a == b)
    assert r0.bytes == r1.bytes == replicated + (file_bytes - replicated) // 2


def test_the_manifest_round_trips_and_is_strict(tp_root: Path, tmp_path: Path) -> None:
    plan = split_tensor_parallel(tp_root, "decoder", None, 2)
    path = tmp_path / "tp.yaml"
    path.write_text(plan.to_yaml())
    assert load_tensor_parallel(path) == plan
    with pytest.raises(ConfigurationError, match="invalid field 'k'"):
        parse_tensor_parallel(plan.to_yaml().replace("k: 2", "k: zero"))
    with pytest.raises(ConfigurationError, match="ranks must be numbered"):
        parse_tensor_parallel(plan.to_yaml().replace("- rank: 1", "- rank: 7"))
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_tensor_parallel(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("value", "message"),
    [("1", "expected R/K"), ("2/2", "R must be 0 to 1"), ("1/3", "for 2 ranks, not 3")],
)
def test_bad_ranks_are_refused(value: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_rank(value, 2)


def test_cli_writes_the_manifest_and_refuses_an_indivisible_k(
    tp_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "m.yaml"
    cmd = [sys.executable, "-m", "podserve", "split", str(tp_root), "minilm"]
    done = subprocess.run([*cmd, "--tp", "2", "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "rank 1/2: 103 tensors" in done.stdout
    assert out.is_file()
    bad = subprocess.run([*cmd, "--tp", "5"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "podserve split: error: --tp 5: the model has 12 attention heads; K must divide the "
        "head count (one of 1, 2, 3, 4, 6, 12)"
    ]
