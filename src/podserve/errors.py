"""The one error tree of podserve.

Every error raised inside podserve derives from :class:`PodserveError` and carries what each
surface needs to answer it: an HTTP status, a gRPC status code name, and whether retrying the
same request could help and whether any work was attempted (the queue worker's
retry/release/dead-letter decision). The HTTP handler, the
gRPC interceptor and the queue worker read these attributes; nothing else maps errors.

::

    PodserveError                         500  INTERNAL
    ├── ConfigurationError                500  INTERNAL          bad settings or CLI flags
    ├── RepositoryError                   503  UNAVAILABLE       the model volume itself
    │   ├── RootNotFoundError                                    root missing / not a directory
    │   └── RootNotReadableError                                 permissions
    ├── ModelDirectoryError               503  FAILED_PRECONDITION  one model version is unusable
    │   ├── ManifestError                                        podserve.yaml missing or invalid
    │   ├── IntegrityError                                       checksums, sizes, unlisted files
    │   ├── UnsafeWeightsError                                   would need unpickling
    │   ├── SignatureError                                       unsigned, unknown key, tampered
    │   ├── CodePolicyError                                      code the operator did not allow
    │   └── AcceleratorUnavailableError                          device/require_accelerator unmet
    ├── InvalidNameError                  400  INVALID_ARGUMENT  a name that could escape the root
    ├── ModelNotFoundError                404  NOT_FOUND
    ├── ModelNotReadyError                503  UNAVAILABLE       loading, draining or failed
    ├── InvalidRequestError               400  INVALID_ARGUMENT  malformed, wrong dtype or shape
    │   └── PayloadTooLargeError          413  INVALID_ARGUMENT
    ├── ResourceExhaustedError            400  RESOURCE_EXHAUSTED  one request bigger than memory
    ├── OverloadedError                   503  UNAVAILABLE       batch queue full (retry later)
    ├── DeadlineExceededError             504  DEADLINE_EXCEEDED request timeout expired in queue
    ├── DrainingError                     503  UNAVAILABLE       shutting down, go elsewhere
    ├── UnauthorizedError                 401  UNAUTHENTICATED   admin endpoint without token
    ├── ForbiddenError                    403  PERMISSION_DENIED admin endpoints disabled
    ├── StageUnavailableError             503  UNAVAILABLE       a pipeline stage is down
    ├── TransferError                     502  UNAVAILABLE       pull/push: transient, retried
    │   └── PermanentTransferError                               404, access denied: not retried
    ├── BrokerError                       503  UNAVAILABLE       RabbitMQ unreachable / channel lost
    └── InferenceError                    500  INTERNAL          the model itself raised
"""

from __future__ import annotations

from typing import ClassVar


class PodserveError(Exception):
    """Root of podserve's errors; subclasses set how each surface reports them."""

    http_status: ClassVar[int] = 500
    grpc_code: ClassVar[str] = "INTERNAL"  # a grpc.StatusCode member name
    retryable: ClassVar[bool] = False  # could the same request succeed later?
    attempted: ClassVar[bool] = True  # False: refused before any work (the queue nacks it)
    exit_code: ClassVar[int] = 1  # for CLI commands such as verify and pull

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigurationError(PodserveError):
    exit_code = 2


class RepositoryError(PodserveError):
    http_status = 503
    grpc_code = "UNAVAILABLE"
    retryable = True
    exit_code = 3


class RootNotFoundError(RepositoryError):
    pass


class RootNotReadableError(RepositoryError):
    pass


class ModelDirectoryError(PodserveError):
    http_status = 503
    grpc_code = "FAILED_PRECONDITION"
    exit_code = 4


class ManifestError(ModelDirectoryError):
    pass


class IntegrityError(ModelDirectoryError):
    pass


class UnsafeWeightsError(ModelDirectoryError):
    pass


class SignatureError(ModelDirectoryError):
    """The version's signature is missing (when required), invalid, or from an unknown key."""


class CodePolicyError(ModelDirectoryError):
    """The manifest names code the operator did not allow (module, volume code, kwargs)."""


class AcceleratorUnavailableError(ModelDirectoryError):
    """The manifest or settings ask for an accelerator this process cannot see."""


class InvalidNameError(PodserveError):
    http_status = 400
    grpc_code = "INVALID_ARGUMENT"
    exit_code = 2


class ModelNotFoundError(PodserveError):
    http_status = 404
    grpc_code = "NOT_FOUND"


class ModelNotReadyError(PodserveError):
    http_status = 503
    grpc_code = "UNAVAILABLE"
    retryable = True
    attempted = False


class InvalidRequestError(PodserveError):
    http_status = 400
    grpc_code = "INVALID_ARGUMENT"


class PayloadTooLargeError(InvalidRequestError):
    http_status = 413


class ResourceExhaustedError(PodserveError):
    http_status = 400
    grpc_code = "RESOURCE_EXHAUSTED"


class ModelMemoryError(PodserveError):
    """An on-demand model does not fit the model memory budget, even after evictions."""

    http_status = 503
    grpc_code = "RESOURCE_EXHAUSTED"
    attempted = False


class OverloadedError(PodserveError):
    http_status = 503
    grpc_code = "UNAVAILABLE"
    retryable = True
    attempted = False


class DeadlineExceededError(PodserveError):
    """The request's own deadline passed: running it again cannot meet it (never requeued)."""

    http_status = 504
    grpc_code = "DEADLINE_EXCEEDED"


class DrainingError(PodserveError):
    http_status = 503
    grpc_code = "UNAVAILABLE"
    retryable = True
    attempted = False


class UnauthorizedError(PodserveError):
    http_status = 401
    grpc_code = "UNAUTHENTICATED"


class ForbiddenError(PodserveError):
    http_status = 403
    grpc_code = "PERMISSION_DENIED"


class StageUnavailableError(PodserveError):
    http_status = 503
    grpc_code = "UNAVAILABLE"
    retryable = True


class RankUnavailableError(StageUnavailableError):
    """A rank of a tensor-parallel group is missing or gone; the message names it."""

    exit_code = 8


class TransferError(PodserveError):
    http_status = 502
    grpc_code = "UNAVAILABLE"
    retryable = True
    exit_code = 5


class PermanentTransferError(TransferError):
    retryable = False
    exit_code = 6


class InferenceError(PodserveError):
    pass


class BrokerError(PodserveError):
    """The message broker (RabbitMQ) is unreachable or closed the channel."""

    http_status = 503
    grpc_code = "UNAVAILABLE"
    retryable = True
    exit_code = 7
