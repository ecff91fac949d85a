"""Hypothesis-generated requests against every operation of the OpenAPI document: no 5xx."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from podserve.protocol.http.openapi import document
from tests.models import DATATYPES
from tests.protocol.http.conftest import ServerThread

DOC = document()
OPERATIONS = [(path, method.upper()) for path, ops in DOC["paths"].items() for method in ops]
MODELS = ["identity", "add_sub", "strings", "nobatch", "all_types"]  # not "slow": 2 s a call
INPUT_NAMES = ["INPUT0", "INPUT1", "IN_FP16", "IN_BOOL", "IN_BYTES", "X"]

scalars = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.booleans(),
    st.text(max_size=5),
    st.none(),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=40,
)
shapes = st.lists(st.one_of(st.integers(-2, 20), st.just(10**12), st.just(384)), max_size=3)
parameters = st.dictionaries(
    st.sampled_from(
        [
            "binary_data_size",
            "binary_data",
            "binary_data_output",
            "timeout",
            "priority",
            "classification",
            "x",
        ]
    ),
    st.one_of(st.integers(-5, 5000), st.booleans(), st.text(max_size=3), st.floats()),
    max_size=3,
)
tensors = st.fixed_dictionaries(
    {"name": st.sampled_from(INPUT_NAMES), "datatype": st.sampled_from([*DATATYPES, "FP8"])},
    optional={"shape": shapes, "data": json_values, "parameters": parameters},
)
infer_docs = st.fixed_dictionaries(
    {"inputs": st.lists(tensors, min_size=0, max_size=3)},
    optional={
        "id": st.one_of(st.text(max_size=8), st.integers()),
        "parameters": parameters,
        "outputs": st.lists(
            st.fixed_dictionaries(
                {"name": st.sampled_from(["OUTPUT0", "OUTPUT1", "NOPE"])},
                optional={"parameters": parameters},
            ),
            max_size=2,
        ),
    },
)


@st.composite
def requests_(draw: st.DrawFn) -> tuple[str, str, bytes, dict[str, str]]:
    template, method = draw(st.sampled_from(OPERATIONS))
    if draw(st.booleans()):  # half of the examples go to the richest operation
        template, method = "/v2/models/{model}/infer", "POST"
    if draw(st.integers(0, 9)) == 0:
        method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE"]))
    model = draw(st.sampled_from(MODELS) if draw(st.integers(0, 4)) else st.text(min_size=1))
    version = draw(st.sampled_from(["1", "2", "0", "-1", "x", "99999999999999999999"]))
    path = template.replace("{model}", quote(model, safe="")).replace("{version}", version)
    headers: dict[str, str] = {}
    kind = draw(st.sampled_from(["json", "binary", "raw", "junk"]))
    if kind == "json":
        body = json.dumps(draw(infer_docs)).encode()
    elif kind == "binary":
        head = json.dumps(draw(infer_docs)).encode()
        body = head + draw(st.binary(max_size=64))
        length = draw(st.one_of(st.just(len(head)), st.integers(-3, len(body) + 3)))
        headers["Inference-Header-Content-Length"] = str(length)
    elif kind == "raw":
        body = draw(st.binary(max_size=2048))
        headers["Inference-Header-Content-Length"] = "0"
    else:
        body = draw(st.binary(max_size=256))
    encoding = draw(st.sampled_from(["", "", "gzip", "deflate", "br", "gzip-broken"]))
    if encoding == "gzip":
        body = gzip.compress(body)
    elif encoding == "deflate":
        body = zlib.compress(body)
    if encoding:
        headers["Content-Encoding"] = encoding.removesuffix("-broken")
    if draw(st.booleans()):
        headers["Accept-Encoding"] = draw(st.sampled_from(["gzip", "deflate", "br", "gzip;q=0"]))
    return method, path, body, headers


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=requests_())
def test_no_5xx(
    server: ServerThread, session: requests.Session, request: tuple[str, str, bytes, dict[str, str]]
) -> None:
    method, path, body, headers = request
    r = session.request(method, server.base + path, data=body, headers=headers, timeout=10)
    assert r.status_code < 500, (method, path, headers, body[:200], r.status_code, r.text)
    if r.status_code >= 400:
        assert isinstance(r.json()["error"], str)


def test_server_healthy_after_fuzzing(server: ServerThread, session: requests.Session) -> None:
    assert session.get(f"{server.base}/v2/health/ready", timeout=5).status_code == 200


@pytest.mark.parametrize(("path", "method"), OPERATIONS)
def test_every_documented_operation_exists(
    server: ServerThread, session: requests.Session, path: str, method: str
) -> None:
    url = server.base + path.replace("{model}", "identity").replace("{version}", "1")
    r = session.request(method, url, timeout=10)
    body: Any = r.json() if r.headers["content-type"] == "application/json" else None
    assert r.status_code != 405
    assert not (r.status_code == 404 and "no endpoint" in str(body)), path


def test_openapi_is_served(server: ServerThread, session: requests.Session) -> None:
    r = session.get(f"{server.base}/v2/openapi.json", timeout=5)
    assert r.status_code == 200
    assert r.json()["openapi"].startswith("3.")
    assert "/v2/models/{model}/infer" in r.json()["paths"]
