"""The queue's border: aio-pika/aiormq errors in, podserve errors out, and the ack decision.

Two things live here and nowhere else in the queue package:

* :func:`broker_errors` turns every aio-pika / aiormq / socket exception into a
  :class:`~podserve.errors.BrokerError` (or a :class:`~podserve.errors.ConfigurationError` when
  the broker refuses our declarations), so nothing above sees a foreign exception type.
* :func:`decide` is the ack / retry / release / dead-letter table, read off the error's
  ``retryable`` and ``attempted`` attributes (the same tree HTTP and gRPC map to statuses):

  =====================================  ====================  =================================
  outcome of the message                 delivery              action
  =====================================  ====================  =================================
  answered                               any                   reply, ack
  refused before any work (draining,     before the last one   release: ``basic.nack(requeue)``
  not ready, overloaded)
  attempted, retryable failure           before the last one   retry: ``basic.reject(requeue)``
  retryable error of either kind         the last one allowed  error reply, dead-letter
  non-retryable (undecodable, unknown    any                   error reply, dead-letter
  model, wrong shape, model raised,
  deadline already passed)
  the reply cannot be published          any                   retry: ``basic.reject(requeue)``
  the connection or a channel dies       any                   forgotten: the broker requeued it
  the worker dies while handling it      any                   broker redelivers it
  =====================================  ====================  =================================

  Reject and nack differ on purpose. From RabbitMQ 4.3 a quorum queue's ``delivery-count``
  (which ``x-delivery-limit`` is checked against) grows on ``basic.reject`` only: a nack means
  "not processed" and is not counted. Before 4.3 (this project checks against 3.10) every
  return, nack, reject or a closed channel alike, counts.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import contextmanager

import aiormq.exceptions

from podserve.errors import BrokerError, ConfigurationError, PodserveError

# Everything aio-pika / aiormq / the socket layer raise when the broker is not there.
_FOREIGN: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,  # a RuntimeError: the channel is closed
    OSError,  # ConnectionError and TimeoutError included
)


class Action(enum.Enum):
    """What the worker does with a delivered message once its outcome is known."""

    ACK = "ack"  # the reply was published and confirmed
    RETRY = "retry"  # reject(requeue): processing failed; counts toward the delivery limit
    RELEASE = "release"  # nack(requeue): not attempted here; RabbitMQ 4.3+ does not count it
    DEAD_LETTER = "dead-letter"  # error reply, then to the DLQ with the reason


def decide(error: PodserveError, delivery_count: int, delivery_limit: int) -> Action:
    """The one ack/dead-letter decision: retryable errors are requeued until the last try."""
    if not error.retryable or delivery_count >= delivery_limit:
        return Action.DEAD_LETTER
    return Action.RETRY if error.attempted else Action.RELEASE


@contextmanager
def broker_errors(what: str) -> Iterator[None]:
    """Translate aio-pika/aiormq errors raised while doing ``what``."""
    try:
        yield
    except PodserveError:
        raise
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        raise ConfigurationError(
            f"{what}: RabbitMQ refused it ({_reason(exc)}); an existing queue or exchange was "
            "declared with other arguments: delete it or use the same settings"
        ) from None
    except aiormq.exceptions.ProbableAuthenticationError as exc:
        raise BrokerError(f"{what}: RabbitMQ refused the credentials ({_reason(exc)})") from None
    except _FOREIGN as exc:
        raise BrokerError(f"{what}: {type(exc).__name__}: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    text = str(exc) or repr(exc)
    return text if len(text) < 300 else text[:300] + "…"
