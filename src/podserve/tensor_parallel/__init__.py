"""Tensor parallelism: every layer's matrices split over K ranks (processes, pods).

``podserve split --tp K`` plans each rank's slices (:mod:`.split`, :mod:`.sharding`) into a
manifest (:mod:`.manifest`); ``podserve serve --tp-rank R/K`` runs a rank (:mod:`.worker`):
rank 0 serves the model (:mod:`.leader`) and drives the steps (:mod:`.steps`) that every rank
takes with its slices (:mod:`.weights`, :mod:`.sharded`) in one process group (:mod:`.group`).
See docs/tensor-parallel.md.
"""

import os

# torch's C++ logging prints a stack trace for every retry while a rank waits for the leader
# (normal while a group starts) and for every gloo error podserve already reports in one line.
# Keep it to fatal errors unless the operator asks for more.
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")
