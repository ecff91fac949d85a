"""The queue's border: aio-pika/aiormq errors in, podserve errors out, and the ack decision.

Two things live here and nowhere else in the queue package:

* :func:`broker_errors` turns every aio-pika / aiormq / socket exception into a
  :class:`~podserve.errors.BrokerError` (or a :class:`~podserve.errors.ConfigurationError` when
  the broker refuses our declarations), so nothing above sees a foreign exception type.
* :func:`decide` is the ack / requeue / dead-letter table, read off the error's ``retryable``
  attribute (the same tree HTTP and gRPC map to statuses):

  =====================================  ====================  ============================
  outcome of the message                 delivery              action
  =====================================  ====================  ============================
  answered                               any                   reply, ack
  retryable error (overloaded, draining,  before the last one   requeue, no reply
  not ready, deadline)
  retryable error                        the last one allowed  error reply, dead-letter
  non-retryable (undecodable, unknown    any                   error reply, dead-letter
  model, wrong shape, model raised)
  the worker dies while handling it      any                   broker redelivers; past
                                                               ``x-delivery-limit`` the
                                                               quorum queue dead-letters it
  =====================================  ====================  ============================
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
    OSError,  # ConnectionError and TimeoutError included
)


class Action(enum.Enum):
    """What the worker does with a delivered message once its outcome is known."""

    ACK = "ack"  # the reply was published and confirmed
    REQUEUE = "requeue"  # a later delivery (maybe on another replica) can succeed
    DEAD_LETTER = "dead-letter"  # error reply, then to the DLQ with the reason


def decide(error: PodserveError, delivery_count: int, delivery_limit: int) -> Action:
    """The one ack/dead-letter decision: retryable errors are requeued until the last try."""
    if error.retryable and delivery_count < delivery_limit:
        return Action.REQUEUE
    return Action.DEAD_LETTER


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
