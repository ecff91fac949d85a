"""The data plane: served models, their states, metadata, statistics and inference.

HTTP, gRPC, the queue worker and pipeline stages all decode their wire format into a
:class:`~podserve.v2.InferRequest`, call :meth:`DataPlane.infer`, and encode the answer.

- :mod:`~podserve.dataplane.plane`: :class:`DataPlane`, the state machine and ``infer``
- :mod:`~podserve.dataplane.models`: a served model and how one is loaded
- :mod:`~podserve.dataplane.validation`: a request checked against its manifest
- :mod:`~podserve.dataplane.metadata`: Triton-shaped metadata, statistics, repository index
"""

from podserve.dataplane.models import ModelFactory, ServedModel
from podserve.dataplane.plane import DataPlane, StateListener

__all__ = ["DataPlane", "ModelFactory", "ServedModel", "StateListener"]
