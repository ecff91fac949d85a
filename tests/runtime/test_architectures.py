"""The lean architectures against transformers' own classes, and their layer API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from podserve.demo import demo_source
from podserve.errors import ModelDirectoryError
from podserve.runtime.architectures import ARCHITECTURES, find_architecture
from podserve.runtime.architectures.bert import Bert
from podserve.runtime.architectures.decoder import Decoder, write_random_decoder
from podserve.runtime.safetensors_view import load_tensors, read_header
from podserve.storage.reader import read_range

TINY_BERT = {
    "model_type": "bert",
    "architectures": ["BertForSequenceClassification"],
    "vocab_size": 120,
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    "num_labels": 3,
}


def _batch(vocab: int, lengths: list[int], seq: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, vocab, (len(lengths), seq), generator=gen)
    mask = (torch.arange(seq)[None] < torch.tensor(lengths)[:, None]).long()
    return ids * mask, mask


def test_lean_bert_equals_transformers_on_minilm() -> None:
    src = demo_source()
    config = json.loads((src / "config.json").read_text())
    data = np.fromfile(src / "model.safetensors", dtype=np.uint8)
    lean = Bert.from_tensors(config, load_tensors(data, "minilm"))
    hf = transformers.BertModel.from_pretrained(str(src), local_files_only=True).eval()
    ids, mask = _batch(config["vocab_size"], [12, 5, 1])
    types = torch.zeros_like(ids)
    with torch.inference_mode():
        ours = lean(ids, mask, types)
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
    real = mask.bool()  # padded positions are never read (pooling masks them)
    assert torch.allclose(ours[real], ref.last_hidden_state[real], atol=1e-5)
    assert torch.allclose(lean.pool(ours, mask), ref.pooler_output, atol=1e-5)
    # Zero copy: the embedding matrix is the file's bytes.
    word = lean.get_parameter("embeddings.word_embeddings.weight")
    assert data.ctypes.data <= word.data_ptr() < data.ctypes.data + data.nbytes


def test_lean_bert_classifier_equals_transformers() -> None:
    torch.manual_seed(0)
    hf = transformers.BertForSequenceClassification(transformers.BertConfig(**TINY_BERT)).eval()
    state = {k: v.detach().clone() for k, v in hf.state_dict().items()}
    lean = Bert.from_tensors(TINY_BERT, state)
    ids, mask = _batch(TINY_BERT["vocab_size"], [12, 7])
    with torch.inference_mode():
        ours = lean.head(lean.pool(lean(ids, mask), mask))
        ref = hf(input_ids=ids, attention_mask=mask).logits
    assert ours.shape == (2, 3)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_decoder_equals_gpt2_and_layer_ranges_compose(tmp_path: Path) -> None:
    config = write_random_decoder(tmp_path, layers=4, hidden=64, vocab=100)
    data = np.fromfile(tmp_path / "model.safetensors", dtype=np.uint8)
    tensors = load_tensors(data, "decoder")
    model = Decoder.from_tensors(config, tensors)
    hf_cfg = {k: v for k, v in config.items() if k not in ("model_type", "architectures")}
    gpt2 = transformers.GPT2Model(transformers.GPT2Config(**hf_cfg, bos_token_id=0, eos_token_id=0))
    gpt2.load_state_dict({k: v.clone() for k, v in tensors.items()}, strict=False)
    gpt2.eval()
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        full = model(ids, mask)
        ref = gpt2(input_ids=ids).last_hidden_state
        hidden = model.embed(ids, mask)
        for start, stop in [(0, 1), (1, 3), (3, 4)]:
            hidden = model.run_layers(hidden, mask, start, stop)
        split = model.final(hidden)
    assert torch.allclose(full, ref, atol=1e-5)
    assert torch.equal(split, full)


def test_a_stage_reads_only_its_byte_ranges(tmp_path: Path) -> None:
    """What a pipeline stage does: header, its tensors' span, a partial model."""
    config = write_random_decoder(tmp_path, layers=4, hidden=32, vocab=50)
    path = tmp_path / "model.safetensors"
    header = read_header(path)
    whole = Decoder.from_tensors(config, load_tensors(np.fromfile(path, np.uint8), "all"))
    ids = torch.randint(0, 50, (1, 6), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)

    stages = []
    for layers, first, last in [(range(0, 2), True, False), (range(2, 4), False, True)]:
        names = Decoder.select_tensors(header.tensors, layers=layers, embeddings=first, head=last)
        offset, length = header.span(names)
        assert length < header.file_size / 1.5  # a stage reads about half the file
        buf = read_range(path, offset, length)
        tensors = header.view(buf, names, offset=offset)
        stages.append(
            Decoder.from_tensors(config, tensors, layers=layers, embeddings=first, head=last)
        )
    with torch.inference_mode():
        hidden = stages[0].run_layers(stages[0].embed(ids, mask), mask)
        out = stages[1].final(stages[1].run_layers(hidden, mask))
        assert torch.equal(out, whole(ids, mask))
    assert stages[0].wte is not None
    assert stages[1].wte is None
    with pytest.raises(AttributeError):
        stages[1].layer(0)


def test_registry_and_support_checks() -> None:
    for target in ARCHITECTURES.values():
        module, _, name = target.partition(":")
        assert issubclass(getattr(__import__(module, fromlist=[name]), name), Bert | Decoder)
    assert find_architecture(TINY_BERT) is Bert
    assert find_architecture({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
    assert find_architecture({"model_type": "roberta"}) is None
    assert find_architecture({**TINY_BERT, "position_embedding_type": "relative_key"}) is None
    assert find_architecture({**TINY_BERT, "architectures": ["BertForMaskedLM"]}) is None


def test_mismatched_weights_are_refused() -> None:
    torch.manual_seed(0)
    hf = transformers.BertForSequenceClassification(transformers.BertConfig(**TINY_BERT))
    state = {k: v.detach().clone() for k, v in hf.state_dict().items()}
    del state["bert.encoder.layer.1.output.dense.weight"]
    with pytest.raises(ModelDirectoryError, match=r"missing \['encoder.layer.1.output.dense"):
        Bert.from_tensors(TINY_BERT, state, where="tiny")
    state = {k: v.detach().clone() for k, v in hf.state_dict().items()}
    with pytest.raises(ModelDirectoryError, match="size mismatch"):
        Bert.from_tensors({**TINY_BERT, "intermediate_size": 48}, state, where="tiny")
