"""Triton's repository extension: off by default, behind a bearer token, unload really frees."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from podserve.settings import Settings
from tests.protocol.http.conftest import ServerThread

AUTH = {"Authorization": "Bearer s3cret"}


def test_disabled_by_default(server: ServerThread) -> None:
    client = httpclient.InferenceServerClient(server.url)
    for call in (
        client.get_model_repository_index,
        lambda: client.load_model("identity"),
        lambda: client.unload_model("identity"),
    ):
        with pytest.raises(InferenceServerException, match="disabled") as info:
            call()
        assert info.value.status() == "403"
    assert client.is_model_ready("identity")


def test_bearer_token_required(make_server: Callable[..., ServerThread]) -> None:
    srv = make_server(
        Settings(repository_api=True, admin_token="s3cret"), refs=[("identity", None)]
    )
    url = f"{srv.base}/v2/repository/models/identity/unload"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        r = requests.post(url, headers=headers, timeout=5)
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Bearer"
        assert "Bearer" in r.json()["error"]
    assert requests.get(f"{srv.base}/v2/models/identity/ready", timeout=5).status_code == 200
    client = httpclient.InferenceServerClient(srv.url)
    index = client.get_model_repository_index(headers=AUTH)
    assert {e["name"] for e in index} >= {"identity", "add_sub"}
    assert [e["name"] for e in index if e.get("state") == "READY"] == ["identity"]


def test_unload_frees_and_load_restores(make_server: Callable[..., ServerThread]) -> None:
    srv = make_server(Settings(repository_api=True), refs=[("identity", None)])
    client = httpclient.InferenceServerClient(srv.url)
    assert srv.dataplane is not None
    x = np.ones((1, 384), np.float32)
    tensor = httpclient.InferInput("INPUT0", [1, 384], "FP32")
    tensor.set_data_from_numpy(x)
    client.infer("identity", [tensor])
    model_ref = weakref.ref(srv.dataplane.models["identity"].model)  # type: ignore[arg-type]

    client.unload_model("identity")
    gc.collect()
    assert model_ref() is None, "the unloaded model object is still referenced"
    assert not client.is_model_ready("identity")
    assert not client.is_server_ready()
    with pytest.raises(InferenceServerException, match="not ready") as info:
        client.infer("identity", [tensor])
    assert info.value.status() == "503"

    with pytest.raises(InferenceServerException) as info:
        client.load_model("no_such_model")
    assert info.value.status() == "404"
    assert "no_such_model" not in srv.dataplane.models

    client.load_model("add_sub")  # a model the server was not started with
    client.load_model("identity")
    assert client.is_model_ready("identity")
    assert client.is_model_ready("add_sub")
    assert client.is_server_ready()
    np.testing.assert_array_equal(client.infer("identity", [tensor]).as_numpy("OUTPUT0"), x)
    index = client.get_model_repository_index()
    assert {e["name"]: e.get("state") for e in index}["identity"] == "READY"
