"""podserve.pipeline.split and .manifest: balanced plans, ranges, digests, the CLI."""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podserve.cli import main
from podserve.errors import ConfigurationError, IntegrityError
from podserve.pipeline.split import balance, split_model
from podserve.pipeline.split_manifest import load_pipeline, parse_stage
from podserve.pipeline.stage_server import read_stage_weights
from podserve.runtime.safetensors_view import read_header
from podserve.storage.repository import ModelRepository


def brute_force(costs: list[float], k: int, first: float, last: float) -> float:
    best = float("inf")
    for cuts in itertools.combinations(range(1, len(costs)), k - 1):
        bounds = [0, *cuts, len(costs)]
        worst = max(
            sum(costs[bounds[i] : bounds[i + 1]])
            + (first if i == 0 else 0)
            + (last if i == k - 1 else 0)
            for i in range(k)
        )
        best = min(best, worst)
    return best


@settings(max_examples=60, deadline=None)
@given(
    costs=st.lists(st.integers(1, 100), min_size=1, max_size=9),
    k=st.integers(1, 4),
    first=st.integers(0, 300),
    last=st.integers(0, 50),
)
def test_balance_is_the_best_contiguous_split(
    costs: list[int], k: int, first: int, last: int
) -> None:
    if k > len(costs):
        with pytest.raises(ConfigurationError):
            balance(costs, k)
        return
    ranges = balance([float(c) for c in costs], k, first, last)
    assert ranges[0].start == 0
    assert ranges[-1].stop == len(costs)
    assert all(len(r) >= 1 for r in ranges)
    assert all(a.stop == b.start for a, b in itertools.pairwise(ranges))
    worst = max(
        sum(costs[j] for j in r) + (first if i == 0 else 0) + (last if i == k - 1 else 0)
        for i, r in enumerate(ranges)
    )
    assert worst == brute_force([float(c) for c in costs], k, first, last)


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in directory.rglob("*")}


def test_split_covers_every_tensor_once_and_leaves_the_model_alone(model_root: Path) -> None:
    before = snapshot(model_root / "minilm")
    pipeline = split_model(model_root, "minilm", None, 3)
    assert snapshot(model_root / "minilm") == before
    assert (pipeline.k, pipeline.model_type, pipeline.num_layers) == (3, "bert", 6)
    header = read_header(model_root / "minilm" / "1" / "model.safetensors")
    covered: list[tuple[int, int]] = sorted(
        (r.offset, r.offset + r.length) for s in pipeline.stages for r in s.ranges
    )
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(covered)), "stages overlap"
    inside = {
        info.name
        for info in header.tensors.values()
        if any(lo <= info.start and info.end <= hi for lo, hi in covered)
    }
    # Everything but the tokenizer's position_ids buffer (not a weight) is in one stage.
    assert set(header.tensors) - inside == {"embeddings.position_ids"}
    assert sum(s.bytes for s in pipeline.stages) == sum(hi - lo for lo, hi in covered)
    assert pipeline.stages[0].embeddings
    assert pipeline.stages[-1].head


def test_split_by_time_measures_layers(model_root: Path) -> None:
    pipeline = split_model(model_root, "decoder", None, 2, by="time")
    assert pipeline.balance == "time"
    assert pipeline.stages[0].layers[0] == 0
    assert all(s.cost > 0 for s in pipeline.stages)


def test_a_stage_reads_and_verifies_only_its_ranges(model_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(model_root / "decoder", root / "decoder")
    pipeline = split_model(root, "decoder", None, 2)
    mv = ModelRepository(root).open("decoder")
    first, second = pipeline.stages
    weights = read_stage_weights(mv, pipeline, first, verify=True)
    header = pipeline.files["model.safetensors"].header_length
    assert weights.bytes_read == first.bytes + header
    assert first.bytes < 0.8 * mv.listing.files["model.safetensors"].size
    assert all(not n.startswith(("h.1.", "h.2.", "h.3.", "ln_f")) for n in weights.tensors)
    # Damage one byte of stage 2's range: stage 1 still loads, stage 2 refuses.
    path = root / "decoder" / "1" / "model.safetensors"
    os.chmod(path, 0o644)
    with open(path, "r+b") as fh:
        fh.seek(second.ranges[0].offset + 100)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0xFF]))
    read_stage_weights(mv, pipeline, first, verify=True)
    with pytest.raises(IntegrityError, match="stage 2"):
        read_stage_weights(mv, pipeline, second, verify=True)


def test_cli_writes_the_manifest_outside_the_root(
    model_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["split", str(model_root), "decoder:1", "--stages", "2"]) == 0
    written = tmp_path / "pipelines" / "decoder-1-k2.yaml"
    assert load_pipeline(written).k == 2
    assert "stage 2/2: layers" in capsys.readouterr().out
    assert main(["split", str(model_root), "decoder", "-k", "9"]) == 2  # 4 layers only
    assert "cannot split 4 layers into 9 stages" in capsys.readouterr().err
    out = tmp_path / "elsewhere.yaml"
    assert main(["split", str(model_root), "decoder", "-k", "3", "--out", str(out)]) == 0
    pipeline = load_pipeline(out)
    assert parse_stage("entry", pipeline) == 0
    assert parse_stage("3/3", pipeline) == 3
    with pytest.raises(ConfigurationError, match="has 3 stages, not 2"):
        parse_stage("1/2", pipeline)
    with pytest.raises(ConfigurationError, match="expected I/K"):
        parse_stage("first", pipeline)


def test_a_manifest_with_a_gap_is_refused(model_root: Path, tmp_path: Path) -> None:
    text = split_model(model_root, "decoder", None, 2).to_yaml()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("  - 1\n  - 4\n", "  - 2\n  - 4\n", 1))
    with pytest.raises(ConfigurationError, match="without gaps"):
        load_pipeline(bad)
