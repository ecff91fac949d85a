"""Tensor parallelism: every layer's matrices split over K ranks (processes, pods).

``podserve split --tp K`` plans each rank's slices (:mod:`.split`, :mod:`.sharding`) into a
manifest (:mod:`.manifest`); ``podserve serve --tp-rank R/K`` runs a rank (:mod:`.worker`):
rank 0 serves the model (:mod:`.leader`) and drives the steps (:mod:`.steps`) that every rank
takes with its slices (:mod:`.weights`, :mod:`.sharded`) in one process group (:mod:`.group`).
See docs/tensor-parallel.md.
"""
