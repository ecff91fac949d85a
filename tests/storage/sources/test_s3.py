"""The S3 backend's border: botocore errors → podserve errors, credentials from a Secret dir."""

from __future__ import annotations

from pathlib import Path

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from podserve.errors import ConfigurationError, PermanentTransferError, TransferError
from podserve.storage.sources.s3 import read_credentials_dir, translate


def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetObject",
    )


@pytest.mark.parametrize(
    ("exc", "kind", "text"),
    [
        (client_error("NoSuchKey", 404), PermanentTransferError, "not found (404)"),
        (client_error("AccessDenied", 403), PermanentTransferError, "access denied (403)"),
        (client_error("InvalidAccessKeyId", 403), PermanentTransferError, "access denied"),
        (client_error("PermanentRedirect", 301), PermanentTransferError, "another region"),
        (client_error("AuthorizationHeaderMalformed", 400), PermanentTransferError, "region"),
        (client_error("SlowDown", 503), TransferError, "retrying"),
        (client_error("InternalError", 500), TransferError, "retrying"),
        (EndpointConnectionError(endpoint_url="http://x"), TransferError, "network error"),
        (ConnectionResetError(), TransferError, "network error"),
        (NoCredentialsError(), PermanentTransferError, "no S3 credentials"),
    ],
)
def test_translate(exc: Exception, kind: type, text: str) -> None:
    err = translate(exc, "s3://b/k")
    assert type(err) is kind or (kind is PermanentTransferError and isinstance(err, kind))
    assert err.retryable is (kind is TransferError)
    assert text in str(err)
    assert str(err).startswith("s3://b/k")


def test_s3fs_wrapped_errors_are_unwrapped() -> None:
    """s3fs re-raises ClientError as OSError with the ClientError as its cause."""

    def wrapped() -> None:
        try:
            raise client_error("SlowDown", 503)
        except ClientError as inner:
            raise OSError("wrapped") from inner

    with pytest.raises(OSError, match="wrapped") as info:
        wrapped()
    assert type(translate(info.value, "s3://b/k")) is TransferError


def test_credentials_dir(tmp_path: Path) -> None:
    assert read_credentials_dir(None) == (None, None, None)
    (tmp_path / "AWS_ACCESS_KEY_ID").write_text("AKIA\n")
    (tmp_path / "AWS_SECRET_ACCESS_KEY").write_text("s3cr3t\n")
    assert read_credentials_dir(tmp_path) == ("AKIA", "s3cr3t", None)
    (tmp_path / "AWS_SESSION_TOKEN").write_text("tok")
    assert read_credentials_dir(tmp_path)[2] == "tok"
    (tmp_path / "AWS_SECRET_ACCESS_KEY").unlink()
    with pytest.raises(ConfigurationError) as info:
        read_credentials_dir(tmp_path)
    assert "s3cr3t" not in str(info.value)
