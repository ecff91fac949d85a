"""The one place gRPC answers errors: a server interceptor around every method.

A :class:`~podserve.errors.PodserveError` ends the call with the status its ``grpc_code``
names and its message as details; anything else is a bug, logged with its traceback and
answered ``INTERNAL`` without internals, and the server keeps serving. Servicer methods just
raise.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from podserve.errors import PodserveError

log = logging.getLogger(__name__)


def status_code(exc: PodserveError) -> grpc.StatusCode:
    """The gRPC status of a podserve error (``INTERNAL`` if its class names no valid code)."""
    return getattr(grpc.StatusCode, exc.grpc_code, grpc.StatusCode.INTERNAL)


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
    if isinstance(exc, PodserveError):
        await context.abort(status_code(exc), exc.message)
    log.exception("gRPC method failed unexpectedly", exc_info=exc)
    await context.abort(
        grpc.StatusCode.INTERNAL,
        f"internal error ({type(exc).__name__}); the server log has the details",
    )


def _passes_through(exc: BaseException) -> bool:
    # An abort raised by the method itself (or by _abort) and cancellation are not failures
    # to translate.
    return isinstance(exc, asyncio.CancelledError | grpc.aio.AbortError)


def _guard_unary(
    fn: Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]],
) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]:
    async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await fn(request, context)
        except BaseException as exc:
            if _passes_through(exc) or not isinstance(exc, Exception):
                raise
            await _abort(context, exc)

    return guarded


def _guard_stream(
    fn: Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]],
) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]:
    async def guarded(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            async for response in fn(requests, context):
                yield response
        except BaseException as exc:
            if _passes_through(exc) or not isinstance(exc, Exception):
                raise
            await _abort(context, exc)

    return guarded


class ErrorInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Wraps each unary-unary and stream-stream handler with the error translation."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _guard_unary(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _guard_stream(handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler
