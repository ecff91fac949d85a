"""S3 and S3-compatible stores (MinIO, Ceph, moto) through ``s3fs``.

Credentials, in the order botocore would look, plus one Kubernetes habit:

* ``--credentials-dir`` / ``PODSERVE_S3_CREDENTIALS_DIR``: a directory of one-value files, as
  a mounted Secret gives (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, optional
  ``AWS_SESSION_TOKEN``; lower-case names and ``access_key_id``/``secret_access_key`` too);
* otherwise botocore's chain: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/
  ``AWS_SESSION_TOKEN``, ``AWS_SHARED_CREDENTIALS_FILE`` + ``AWS_PROFILE``, web identity
  (IRSA), instance metadata.

Endpoint: ``--endpoint-url`` or ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``; region:
``--region`` or ``AWS_REGION``/``AWS_DEFAULT_REGION``. Secrets are never put in messages.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from podserve.errors import ConfigurationError, PermanentTransferError, TransferError
from podserve.storage.sources.base import Source, SourceOptions, access_denied, not_found

CHUNK = 4 * 1024 * 1024

_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}
_DENIED = {
    "AccessDenied",
    "403",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "AllAccessDisabled",
    "AccountProblem",
}
_REGION = {
    "PermanentRedirect",
    "AuthorizationHeaderMalformed",
    "IllegalLocationConstraintException",
    "301",
    "IncorrectEndpoint",
}
_TRANSIENT = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "500",
    "502",
    "503",
    "504",
}

_KEY_FILES = ("aws_access_key_id", "access_key_id", "accesskey", "access-key-id")
_SECRET_FILES = ("aws_secret_access_key", "secret_access_key", "secretkey", "secret-access-key")
_TOKEN_FILES = ("aws_session_token", "session_token", "token")


class S3Source(Source):
    def __init__(self, uri: str, options: SourceOptions) -> None:
        super().__init__(uri, options)
        rest = uri.split("://", 1)[1].split("?", 1)[0]
        self.bucket, _, self.prefix = rest.partition("/")
        if not self.bucket:
            raise ConfigurationError(f"{uri!r}: expected s3://bucket/prefix")
        self._fs: Any = None

    async def _filesystem(self) -> Any:
        if self._fs is not None:
            return self._fs
        try:
            import s3fs
        except ImportError:
            raise ConfigurationError("s3:// needs s3fs: pip install 'podserve[s3]'") from None
        kwargs: dict[str, Any] = {"anon": self.options.anonymous}
        key, secret, token = read_credentials_dir(self.options.credentials_dir)
        if key:
            kwargs.update(key=key, secret=secret, token=token)
        endpoint = (
            self.options.endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        if endpoint:
            kwargs["endpoint_url"] = endpoint
        region = (
            self.options.region
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
        )
        client_kwargs: dict[str, Any] = {}
        if region:
            client_kwargs["region_name"] = region
        self._fs = s3fs.S3FileSystem(
            asynchronous=True,
            skip_instance_cache=True,
            client_kwargs=client_kwargs,
            config_kwargs={
                "connect_timeout": self.options.timeout_s,
                "read_timeout": self.options.timeout_s,
                "max_pool_connections": 64,
                "retries": {"max_attempts": 1},
            },
            **kwargs,
        )
        self._fs.retries = 1  # download.py retries with backoff; do not multiply attempts
        try:
            await self._fs.set_session()
        except Exception as exc:
            raise translate(exc, self.describe()) from None
        return self._fs

    def _key(self, name: str) -> str:
        if not name:
            return self.prefix
        return f"{self.prefix.rstrip('/')}/{name}" if self.prefix else name

    async def _call(self, method: str, where: str, **kwargs: Any) -> Any:
        fs = await self._filesystem()
        try:
            return await fs._call_s3(method, Bucket=self.bucket, **kwargs)
        except Exception as exc:
            raise translate(exc, where) from None

    async def sizes(self, names: Iterable[str]) -> dict[str, int]:
        wanted = list(names)
        if wanted == [""]:
            head = await self._call("head_object", self.describe(), Key=self.prefix)
            return {"": int(head["ContentLength"])}
        # One listing instead of a HEAD per file.
        prefix = self._key("")
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        found: dict[str, int] = {}
        token: str | None = None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page = await self._call("list_objects_v2", self.describe(), Prefix=prefix, **extra)
            for obj in page.get("Contents", []):
                found[obj["Key"][len(prefix) :]] = int(obj["Size"])
            if not page.get("IsTruncated"):
                break
            token = page["NextContinuationToken"]
        missing = [n for n in wanted if n not in found]
        if missing:
            raise not_found(self.join(missing[0]))
        return {n: found[n] for n in wanted}

    async def read_bytes(self, name: str) -> bytes:
        chunks = [c async for c in self._stream(name, None)]
        return b"".join(chunks)

    def stream(self, name: str, start: int, end: int) -> AsyncIterator[bytes]:
        return self._stream(name, (start, end))

    async def _stream(self, name: str, span: tuple[int, int] | None) -> AsyncIterator[bytes]:
        where = self.join(name)
        extra = {"Range": f"bytes={span[0]}-{span[1] - 1}"} if span else {}
        resp = await self._call("get_object", where, Key=self._key(name), **extra)
        body = resp["Body"]
        try:
            while True:
                try:
                    chunk = await body.read(CHUNK)
                except Exception as exc:
                    raise translate(exc, where) from None
                if not chunk:
                    break
                yield chunk
        finally:
            body.close()

    async def put_file(self, local: Path, name: str) -> None:
        fs = await self._filesystem()
        try:
            await fs._put_file(str(local), f"{self.bucket}/{self._key(name)}")
        except Exception as exc:
            raise translate(exc, self.join(name)) from None

    async def close(self) -> None:
        fs, self._fs = self._fs, None
        if fs is not None and getattr(fs, "_s3", None) is not None:
            await fs._s3.__aexit__(None, None, None)


def read_credentials_dir(directory: Path | None) -> tuple[str | None, str | None, str | None]:
    """(key, secret, token) from a mounted Secret directory; (None, None, None) if unset."""
    if directory is None:
        return None, None, None
    if not directory.is_dir():
        raise ConfigurationError(f"credentials directory {directory} does not exist")
    files = {p.name.lower(): p for p in directory.iterdir() if p.is_file()}

    def pick(names: tuple[str, ...]) -> str | None:
        for n in names:
            if n in files:
                return files[n].read_text(encoding="utf-8").strip()
        return None

    key, secret = pick(_KEY_FILES), pick(_SECRET_FILES)
    if not key or not secret:
        raise ConfigurationError(
            f"credentials directory {directory}: expected files AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY"
        )
    return key, secret, pick(_TOKEN_FILES)


def _client_error(exc: BaseException) -> Any:
    seen: BaseException | None = exc
    while seen is not None:
        if getattr(seen, "response", None) is not None and hasattr(seen, "operation_name"):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def translate(exc: BaseException, where: str) -> TransferError:
    """botocore/s3fs/aiohttp errors → podserve's two transfer errors, with a usable hint."""
    if isinstance(exc, TransferError):
        return exc
    client_error = _client_error(exc)
    if client_error is not None:
        err = client_error.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(client_error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        if code in _NOT_FOUND or status == 404:
            return not_found(where)
        if code in _REGION or status == 301:
            return PermanentTransferError(
                f"{where}: the bucket is in another region or behind another endpoint "
                f"({code}); set --region / AWS_REGION or --endpoint-url"
            )
        if code in _DENIED or status == 403:
            return access_denied(where, f" ({code}); check the credentials and the bucket policy")
        if code in _TRANSIENT or status >= 500 or status == 429:
            return TransferError(f"{where}: server busy or failing ({code or status}); retrying")
        return PermanentTransferError(f"{where}: {code or status}: {err.get('Message', '')}")
    name = type(exc).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return PermanentTransferError(
            f"{where}: no S3 credentials found; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
            "AWS_SHARED_CREDENTIALS_FILE or --credentials-dir (or --anonymous)"
        )
    if isinstance(exc, FileNotFoundError):
        return not_found(where)
    if isinstance(exc, PermissionError):
        return access_denied(where, "; check the credentials and the bucket policy")
    if isinstance(exc, OSError | asyncio.TimeoutError | ConnectionError) or name.endswith(
        (
            "ConnectionError",
            "ConnectionClosedError",
            "ReadTimeoutError",
            "ConnectTimeoutError",
            "ClientPayloadError",
            "ServerDisconnectedError",
            "IncompleteReadError",
        )
    ):
        return TransferError(f"{where}: network error ({name}); retrying")
    return TransferError(f"{where}: {name}: {exc}")
