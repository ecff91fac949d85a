"""proto/grpc_service.proto against the classes tritonclient.grpc generated from Triton's file.

For every message and the service, the field names, numbers, types and labels must equal
tritonclient's; then a fully populated message (every field, every oneof member, maps, nested
messages) serialised by one side must parse on the other into the same values and back into
the same bytes. That is the wire contract; names alone would not catch a wrong number.
"""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import descriptor as d
from google.protobuf.json_format import MessageToDict
from google.protobuf.unknown_fields import UnknownFieldSet
from tritonclient.grpc import service_pb2 as triton

from podserve.protocol.grpc._generated import grpc_service_pb2 as ours

OURS = ours.DESCRIPTOR
MESSAGES = sorted(OURS.message_types_by_name)


def _shape(desc: d.Descriptor) -> dict[str, Any]:
    fields = {}
    for f in desc.fields:
        kind = f.message_type.full_name if f.message_type else f.type
        fields[f.name] = (
            f.number,
            kind,
            f.is_repeated,
            f.containing_oneof.name if f.containing_oneof else None,
        )
    nested = {n.name: _shape(n) for n in desc.nested_types}
    return {"fields": fields, "nested": nested}


def test_every_message_defined_here_is_triton_message() -> None:
    assert len(MESSAGES) >= 30
    for name in MESSAGES:
        assert name in triton.DESCRIPTOR.message_types_by_name, name


@pytest.mark.parametrize("name", MESSAGES)
def test_fields_match_triton(name: str) -> None:
    mine = OURS.message_types_by_name[name]
    theirs = triton.DESCRIPTOR.message_types_by_name[name]
    assert mine.full_name == theirs.full_name == f"inference.{name}"
    assert _shape(mine) == _shape(theirs)


def test_service_methods_match_triton() -> None:
    mine = OURS.services_by_name["GRPCInferenceService"]
    theirs = triton.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert mine.full_name == theirs.full_name == "inference.GRPCInferenceService"
    for method in mine.methods:
        other = theirs.methods_by_name[method.name]
        assert (method.input_type.full_name, method.output_type.full_name) == (
            other.input_type.full_name,
            other.output_type.full_name,
        )
        assert method.client_streaming == other.client_streaming
        assert method.server_streaming == other.server_streaming
    assert {m.name for m in mine.methods} >= {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "ModelStreamInfer",
        "ModelStatistics",
        "RepositoryIndex",
        "RepositoryModelLoad",
        "RepositoryModelUnload",
    }


_SCALARS: dict[int, Any] = {
    d.FieldDescriptor.TYPE_BOOL: True,
    d.FieldDescriptor.TYPE_INT32: -7,
    d.FieldDescriptor.TYPE_INT64: -(2**40),
    d.FieldDescriptor.TYPE_UINT32: 4_000_000_000,
    d.FieldDescriptor.TYPE_UINT64: 2**63 + 5,
    d.FieldDescriptor.TYPE_FLOAT: 1.5,
    d.FieldDescriptor.TYPE_DOUBLE: -2.25,
    d.FieldDescriptor.TYPE_STRING: "héllo",
    d.FieldDescriptor.TYPE_BYTES: b"\x00\xffraw",
}


def _fill(msg: Any, oneof_pick: int, depth: int = 0) -> None:
    """Set every field of ``msg`` (one member per oneof, chosen by ``oneof_pick``)."""
    desc = msg.DESCRIPTOR
    for f in desc.fields:
        if f.containing_oneof is not None:
            members = f.containing_oneof.fields
            if f is not members[oneof_pick % len(members)]:
                continue
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            key_f, val_f = (
                f.message_type.fields_by_name["key"],
                f.message_type.fields_by_name["value"],
            )
            key = _SCALARS[key_f.type]
            target = getattr(msg, f.name)
            if val_f.message_type is not None:
                _fill(target[key], oneof_pick, depth + 1)
            else:
                target[key] = _SCALARS[val_f.type]
        elif f.message_type is not None:
            if depth > 4:
                continue
            if f.is_repeated:
                _fill(getattr(msg, f.name).add(), oneof_pick, depth + 1)
                _fill(getattr(msg, f.name).add(), oneof_pick + 1, depth + 1)
            else:
                _fill(getattr(msg, f.name), oneof_pick, depth + 1)
        elif f.is_repeated:
            getattr(msg, f.name).extend([_SCALARS[f.type], _SCALARS[f.type]])
        else:
            setattr(msg, f.name, _SCALARS[f.type])


def _dict(msg: Any) -> dict[str, Any]:
    return MessageToDict(msg, preserving_proto_field_name=True)


@pytest.mark.parametrize("pick", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("name", MESSAGES)
def test_round_trip_both_ways(name: str, pick: int) -> None:
    theirs_cls = getattr(triton, name)
    ours_cls = getattr(ours, name)

    sent = theirs_cls()
    _fill(sent, pick)
    wire = sent.SerializeToString(deterministic=True)
    parsed = ours_cls.FromString(wire)
    assert _dict(parsed) == _dict(sent)
    assert parsed.SerializeToString(deterministic=True) == wire

    mine = ours_cls()
    _fill(mine, pick)
    back = theirs_cls.FromString(mine.SerializeToString(deterministic=True))
    assert _dict(back) == _dict(mine)
    assert not UnknownFieldSet(parsed), "fields tritonclient sent that we do not know"


def test_model_infer_raw_contents_keep_field_numbers() -> None:
    """The fields tritonclient relies on, spelled out: raw_input_contents = 7, raw_output = 6."""
    req = triton.ModelInferRequest(model_name="m", raw_input_contents=[b"\x01\x02"])
    assert req.SerializeToString().endswith(b"\x3a\x02\x01\x02")  # (7 << 3) | 2 = 0x3a
    resp = ours.ModelInferResponse(raw_output_contents=[b"\x09"])
    assert resp.SerializeToString() == b"\x32\x01\x09"  # (6 << 3) | 2 = 0x32
    assert (
        triton.ModelInferResponse.FromString(resp.SerializeToString()).raw_output_contents[0]
        == b"\x09"
    )
