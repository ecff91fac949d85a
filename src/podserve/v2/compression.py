"""``Content-Encoding`` gzip / deflate for request bodies (REST and queue messages alike)."""

from __future__ import annotations

import zlib

from podserve.errors import InvalidRequestError, PayloadTooLargeError


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """Undo ``Content-Encoding`` gzip/deflate, never inflating past ``limit`` bytes."""
    if encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        # RFC 9110 "deflate" is the zlib format; some clients send a bare deflate stream.
        wbits = zlib.MAX_WBITS if body[:1] and (body[0] & 0x0F) == 8 else -zlib.MAX_WBITS
    else:
        raise InvalidRequestError(
            f"unsupported Content-Encoding {encoding!r}; use gzip, deflate or identity"
        )
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidRequestError(f"request body is not valid {encoding} data: {exc}") from None
    if len(out) > limit:
        raise PayloadTooLargeError(
            f"decompressed request body exceeds the limit of {limit} bytes (max_body_bytes)"
        )
    if not inflater.eof:
        raise InvalidRequestError(f"request body is truncated {encoding} data")
    return out
