"""One settings object, read from ``PODSERVE_*`` environment variables and overridden by flags.

Kubernetes users set these in a ConfigMap; every CLI flag of ``podserve serve`` / ``worker``
maps onto one field here, so the two never disagree. ``docs/configuration.md`` is generated
from this class (``python -m podserve.settings > docs/configuration.md``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Runtime configuration of a podserve process."""

    model_config = SettingsConfigDict(env_prefix="PODSERVE_", extra="ignore")

    # --- model repository ---------------------------------------------------------------
    model_root: Path = Field(Path("/mnt/models"), description="Model repository root (read-only).")
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Models to serve as NAME or NAME:VERSION; empty serves every model found.",
    )
    verify: Literal["full", "size"] = Field(
        "full",
        description="Weight check at load: full digests (BLAKE3 if recorded, else SHA-256) or "
        "sizes only (reported as such; only use on trusted volumes).",
    )
    read_strategy: Literal["mmap", "read"] = Field(
        "mmap",
        description="How weights are read: memory-mapped (fast on local disks and warm caches) or "
        "large sequential reads into one buffer (better on network filesystems).",
    )

    archive_max_bytes: int = Field(
        512 * 1024**3,
        description="podserve pull: the most bytes one archive may expand to (its members' "
        "declared sizes added up); a larger one is refused before anything is written.",
    )
    archive_max_members: int = Field(
        100_000, description="podserve pull: the most members one archive may hold."
    )

    # --- trust (THREAT_MODEL.md) --------------------------------------------------------
    trusted_keys_dir: Path | None = Field(
        None,
        description="Directory of trusted public keys (PEM, *.pub or *.pem; a Secret or "
        "ConfigMap volume). Signed versions are verified against them before any byte is used.",
    )
    require_signature: bool = Field(
        False,
        description="Refuse model versions without a signature from a trusted key "
        "(needs trusted_keys_dir).",
    )
    allowed_modules: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Module prefixes a manifest's options.module may import (comma-separated, "
        "e.g. mycompany.models); nothing else is imported on a manifest's behalf.",
    )
    allow_volume_code: Literal["no", "signed", "yes"] = Field(
        "no",
        description="May a version's own .py files run (options.module: model.py:Class)? no; "
        "signed = only in versions signed by a trusted key; yes = any verified version.",
    )

    # --- serving surfaces ---------------------------------------------------------------
    host: str = Field("0.0.0.0", description="Address the HTTP and gRPC servers bind.")
    http_port: int = Field(
        8080, ge=0, le=65535, description="HTTP (Open Inference Protocol REST) port; 0 = off."
    )
    grpc_port: int = Field(
        8081, ge=0, le=65535, description="gRPC (GRPCInferenceService) port; 0 = off."
    )
    grpc_max_connection_age_seconds: float = Field(
        5.0,
        ge=0,
        description="Send each gRPC connection GOAWAY after this long (clients reconnect "
        "transparently, through the Service): keep it under preStop sleep + drain grace so "
        "gRPC clients leave a terminating pod before it stops; also rebalances long-lived "
        "connections across replicas. 0 = never.",
    )
    max_body_bytes: int = Field(
        64 * 1024 * 1024, ge=1, description="Largest accepted request body."
    )
    repository_api: bool = Field(
        False, description="Enable /v2/repository load/unload (needs admin_token when set)."
    )
    admin_token: SecretStr | None = Field(
        None, description="Bearer token required by the repository (admin) endpoints."
    )

    # --- batching -----------------------------------------------------------------------
    max_batch_size: int | None = Field(
        None, ge=1, description="Override the manifest's batch size."
    )
    max_queue_delay_ms: float | None = Field(
        None, ge=0, description="Override how long the batcher waits to fill a batch."
    )
    batching_policy: Literal["adaptive", "fixed_delay"] | None = Field(
        None,
        description="Override the manifest's batching.policy: adaptive (a request that finds "
        "the model free runs at once; the queue delay is used only when the model's measured "
        "batch curve says waiting pays) or fixed_delay (always wait up to the queue delay for "
        "the batch to fill, as Triton does).",
    )
    max_queue_size: int = Field(
        4096, ge=1, description="Requests waiting per model before new ones get 503/UNAVAILABLE."
    )
    inline_infer_us: float = Field(
        50.0,
        ge=0,
        description="Run a model's batches on the event loop, without the hand-off to its "
        "inference thread, while they measure under this many microseconds; 0 = always hand off.",
    )
    gil_switch_interval_us: float = Field(
        500.0,
        gt=0,
        description="How long a Python thread may hold the interpreter lock while another waits "
        "(Python's own default is 5000). Shorter lets an inference thread start or finish a "
        "batch while the event loop encodes answers, instead of idling the model.",
    )

    # --- many models per pod -------------------------------------------------------------
    model_memory_bytes: int | None = Field(
        None,
        ge=1,
        description="Host memory budget for resident models (measured bytes of every loaded "
        "model, pinned ones included); on-demand models are evicted (PODSERVE_EVICTION) to stay "
        "under it. Unset (and no fraction) = no budget: nothing is evicted.",
    )
    model_memory_fraction: float | None = Field(
        None,
        gt=0,
        le=1,
        description="The budget as a share of the container's memory limit (cgroup v2 "
        "memory.max or v1 memory.limit_in_bytes); PODSERVE_MODEL_MEMORY_BYTES wins when both "
        "are set.",
    )
    eviction: Literal["gdsf", "lru"] = Field(
        "gdsf",
        description="Which on-demand model makes room first under the budget: gdsf "
        "(GreedyDual-Size-Frequency: lowest requests-since-load per MiB first, aged by a clock; "
        "keeps many small hot models rather than one large lukewarm one, fewest loads) or lru "
        "(least recently used). Models with requests in flight go last either way.",
    )
    on_demand_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Models served on demand (comma-separated names, added to the served set): "
        "listed in the index, loaded on their first request, evictable. A manifest may also say "
        "`residency: on-demand`; every other model is pinned (loaded at start, gates readiness).",
    )
    cold_load_timeout_seconds: float = Field(
        120.0,
        gt=0,
        description="Longest a request waits for its on-demand model to load (the request's own "
        "timeout wins when shorter); it then gets 503 and the load carries on.",
    )

    # --- lifecycle ----------------------------------------------------------------------
    drain_grace_seconds: float = Field(
        5.0,
        ge=0,
        description="After SIGTERM, how long every request is still served as before (readiness "
        "false while endpoints are being removed) before new ones get 503.",
    )
    drain_timeout_seconds: float = Field(
        25.0,
        ge=0,
        description="After the grace window, longest wait for accepted work to finish (HTTP, "
        "gRPC and the queue worker share this deadline). terminationGracePeriodSeconds must "
        "be at least preStop sleep + grace + this + 5 s.",
    )

    # --- accelerators -------------------------------------------------------------------
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N (manifest may override).")
    intra_op_threads: int | None = Field(
        None,
        ge=1,
        description="Threads one inference may use (torch.set_num_threads, ONNX Runtime "
        "intra_op_num_threads); unset = the framework's default (all cores).",
    )
    memory_fraction: float = Field(
        0.9,
        gt=0,
        le=1,
        description="Share of the device's free memory this process may use (time-slicing).",
    )

    # --- pull (the init container) -------------------------------------------------------
    pull_concurrency: int = Field(8, ge=1, description="`podserve pull`: parallel requests.")
    pull_part_size_mb: int = Field(
        32, ge=1, description="`podserve pull`: byte-range part size in MiB."
    )
    pull_policy: Literal["always", "if-not-present"] = Field(
        "always",
        description="`podserve pull`: `always` compares a version already on the volume with "
        "the source's SHA256SUMS (one request; notices a `push --force`); `if-not-present` "
        "keeps it without asking the source when the node can vouch for it (a version "
        "republished at its URI is then not noticed: use it when versions are never "
        "republished).",
    )
    s3_credentials_dir: Path | None = Field(
        None,
        description="`pull`/`push`: a directory holding AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY files (a mounted Kubernetes Secret); else the AWS chain.",
    )

    # --- queue worker -------------------------------------------------------------------
    amqp_url: SecretStr = Field(
        SecretStr("amqp://guest:guest@127.0.0.1:5672/"),
        description="RabbitMQ URL (a secret: its password never appears in logs or errors).",
    )
    queue: str | None = Field(None, description="Consume v2 requests from this queue.")
    dead_letter_queue: str | None = Field(None, description="Defaults to '<queue>.dlq'.")
    delivery_limit: int = Field(
        3, ge=1, description="Deliveries before a message is dead-lettered."
    )
    prefetch: int | None = Field(None, ge=1, description="Defaults to 2 x the model's batch size.")
    dead_letter_exchange: str | None = Field(None, description="Defaults to '<queue>.dlx'.")
    results_exchange: str | None = Field(
        None,
        description="Publish replies to this exchange (routing key: the request's reply_to, "
        "else the model name) instead of the default exchange.",
    )

    # --- pipeline -----------------------------------------------------------------------
    stage: str | None = Field(None, description="Serve pipeline stage I/K of a split model.")
    pipeline: Path | None = Field(
        None,
        description="Pipeline manifest written by `podserve split` (needed with --stage; "
        "stage 0 or 'entry' is the coordinator users call).",
    )
    pipeline_manifest: str | None = Field(
        None,
        description="The pipeline manifest's YAML itself (e.g. a ConfigMap key as an "
        "environment variable), when PODSERVE_PIPELINE names no file.",
    )
    pipeline_stages: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="The entry's stage addresses, host:port of each stage's gRPC port, in order.",
    )
    pipeline_micro_batch: int = Field(
        4, ge=0, description="Rows per micro-batch the entry sends through the stages; 0 = off."
    )
    pipeline_inflight: int = Field(
        4, ge=1, description="Micro-batches in flight through the stages at once (1 = sequential)."
    )
    pipeline_wait_seconds: float = Field(
        600.0, gt=0, description="How long the entry waits at start-up for every stage to be ready."
    )
    pipeline_timeout_seconds: float = Field(
        60.0, gt=0, description="Deadline of one call from the entry to a stage."
    )

    # --- tensor parallelism -------------------------------------------------------------
    tp_rank: str | None = Field(
        None,
        description="Serve tensor-parallel rank R/K of a model (0 serves users; 'lws' reads "
        "LWS_WORKER_INDEX/LWS_GROUP_SIZE).",
    )
    tensor_parallel: Path | None = Field(
        None, description="Tensor-parallel manifest written by `podserve split --tp K`."
    )
    tensor_parallel_manifest: str | None = Field(
        None, description="The tensor-parallel manifest's YAML itself (e.g. from a ConfigMap)."
    )
    tp_leader: str | None = Field(
        None,
        description="Address of rank 0 for ranks 1..K-1 (a headless Service name); unset = "
        "LWS_LEADER_ADDRESS.",
    )
    tp_port: int = Field(29500, description="Port of rank 0's rendezvous store.")
    tp_wait_seconds: float = Field(
        600.0,
        gt=0,
        description="How long the ranks wait for each other (join, load) before naming the "
        "missing rank and failing.",
    )
    tp_timeout_seconds: float = Field(
        30.0, gt=0, description="Timeout of every collective operation between the ranks."
    )

    # --- logs ---------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="Python logging level."
    )
    log_format: Literal["json", "text"] = Field("text", description="json for log collectors.")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("models")
    @classmethod
    def _check_models(cls, value: list[str]) -> list[str]:
        from podserve.storage.names import parse_model_ref

        for ref in value:
            parse_model_ref(ref)
        return value

    @field_validator("pipeline_stages", mode="before")
    @classmethod
    def _split_stages(cls, value: Any) -> Any:
        """``PODSERVE_PIPELINE_STAGES=stage-1:8081,stage-2:8081``."""
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("on_demand_models", mode="before")
    @classmethod
    def _split_on_demand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("allowed_modules", mode="before")
    @classmethod
    def _split_modules(cls, value: Any) -> Any:
        """``PODSERVE_ALLOWED_MODULES=mycompany.models,transformers``."""
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, value: Any) -> Any:
        """``PODSERVE_MODELS=a,b:2`` (or a JSON list) as a ConfigMap would write it."""
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [v.strip() for v in value.split(",") if v.strip()]
        return value


# After the drain deadline: surfaces closing, models unloading, the interpreter exiting.
STOP_MARGIN_SECONDS = 5.0


def worst_case_stop_seconds(*, pre_stop: float, grace: float, drain_timeout: float) -> float:
    """Longest time from a pod's termination to its process's exit: the preStop sleep, the
    grace window, the drain (every surface shares its deadline), then
    :data:`STOP_MARGIN_SECONDS`. ``lifecycle.Server.shutdown`` keeps to it; the deployment
    policy checks ``terminationGracePeriodSeconds`` against it."""
    return pre_stop + grace + drain_timeout + STOP_MARGIN_SECONDS


def render_markdown() -> str:
    """The settings table for docs/configuration.md."""
    lines = [
        "# Configuration",
        "",
        "Generated by `python -m podserve.settings`; do not edit by hand.",
        "Every setting is read from the environment variable shown, and most from a CLI flag.",
        "",
        "| variable | default | description |",
        "|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        if isinstance(default, SecretStr):  # the default (guest:guest) is no secret
            default = default.get_secret_value()
        lines.append(f"| `PODSERVE_{name.upper()}` | `{default}` | {field.description or ''} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_markdown(), end="")
