"""Every knob of the job, in one validated object.

Precedence: explicit argument > `FRAUD_*` environment variable > default.
`load_settings()` turns pydantic's errors into one `SettingsError` whose lines
name the variable, the bad value and how to fix it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bytewax_fraud.errors import SettingsError
from bytewax_fraud.records import MAX_MESSAGE_BYTES

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
DEFAULT_MODEL = MODELS_DIR / "fraud_gru.onnx"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DEVICE = re.compile(r"^(cpu|auto|cuda(:\d+)?)$")


def parse_duration(value: object, allow_zero: bool = False) -> float:
    """Seconds from a number or a string like '30d', '12h', '90m', '45s', '3600'."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 30d, 12h, 90m or seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ValueError("expected a duration like 30d, 12h, 90m or seconds")
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise ValueError("the duration must be positive")
    return seconds


class Settings(BaseSettings):
    """Settings of the fraud-scoring job. Each field reads `FRAUD_<NAME>` from the environment."""

    model_config = SettingsConfigDict(
        env_prefix="FRAUD_", extra="forbid", validate_default=True, frozen=True
    )

    events: int | None = Field(
        None, ge=1, description="stop after this many generated events (unset: run until stopped)"
    )
    users: int = Field(10_000, ge=1, le=9_999_999, description="users in the built-in generator")
    seed: int = Field(0, ge=0, description="seed of the built-in generator")
    rate: float = Field(
        0.0, ge=0, description="offered load of the generator in events/s (0: as fast as possible)"
    )
    output_dir: Path = Field(Path("out"), description="where predictions/dead letters are written")
    state_dir: Path = Field(Path("state"), description="per-partition RocksDB stores")
    model: Path = Field(DEFAULT_MODEL, description="ONNX model file following the model contract")
    model_id: str | None = Field(None, description="name shown in predictions (default: file stem)")
    device: str = Field("cpu", description="cpu, cuda, cuda:N or auto")
    ort_threads: int = Field(1, ge=1, le=64, description="ONNX Runtime intra-op threads")
    partitions: int = Field(4, ge=1, le=4096, description="state partitions (= Kafka partitions)")
    window: int = Field(10, ge=2, le=255, description="amounts kept per user")
    state_ttl: float = Field(
        30 * 86400.0, description="idle time after which a user starts fresh (e.g. 30d, 12h)"
    )
    max_future_skew: float = Field(
        3600.0,
        description=(
            "events further ahead of the record's source timestamp and of the partition's"
            " event-time clock become TimestampTooFarAhead dead letters (e.g. 1h)"
        ),
    )
    allowed_lateness: float = Field(
        86400.0,
        description=(
            "events further behind their user's last event or the partition's event-time"
            " clock become TimestampTooLate dead letters (e.g. 1d; 0: none)"
        ),
    )
    batch_max: int = Field(1024, ge=1, le=100_000, description="largest inference batch")
    batch_timeout_ms: float = Field(
        5.0,
        ge=0,
        le=60_000,
        description=(
            "longest wait to fill a source batch, in ms (Kafka: the pause before re-reading"
            " a partition whose last read did not fill a batch)"
        ),
    )
    status_interval: float = Field(
        5.0, ge=0, description="seconds between status lines on stderr (0: off)"
    )
    # Short steps, often: a step holds up its partition's events while it runs (10,000
    # records took 12 ms, a p99 spike; 1,000 take ~1 ms), and 1,000 a second sweep as much.
    sweep_interval: float = Field(
        1.0, gt=0, description="seconds between TTL sweep steps of a partition"
    )
    sweep_chunk: int = Field(1_000, ge=1, description="records examined per TTL sweep step")
    state_cache_mb: float = Field(
        16.0,
        ge=0,
        le=4096,
        description=(
            "recently seen users' records kept in memory per partition, so a batch reads only"
            " the others from RocksDB (0: off; every record is still written to RocksDB)"
        ),
    )
    state_buffer_mb: float = Field(
        0.0,
        ge=0,
        le=4096,
        description=(
            "state writes held in memory per partition before one RocksDB write (0: off;"
            " faster, but after a crash replayed predictions are re-scored: same score, new"
            " latency_ms)"
        ),
    )
    max_message_bytes: int = Field(
        MAX_MESSAGE_BYTES, ge=64, description="larger input messages become dead letters"
    )
    recovery_dir: Path | None = Field(
        None, description="Bytewax recovery directory (unset: no recovery; the demo sets it)"
    )
    snapshot_interval: float = Field(
        5.0, gt=0, description="seconds between snapshots (the epoch length) with recovery"
    )
    backup_interval: float = Field(
        30.0, ge=0, description="seconds old snapshots are kept, for backups of the recovery dir"
    )
    control_file: Path | None = Field(
        None, description="JSON Lines file of model-control commands, tailed while running"
    )
    model_dir: Path = Field(MODELS_DIR, description="control commands may only load models here")
    control_poll_interval: float = Field(
        0.5, gt=0, description="seconds between reads of the control input"
    )
    gc_threshold: int = Field(
        100_000,
        ge=0,
        description="allocations between young GC collections (0: Python's default tuning)",
    )
    summary_file: Path | None = Field(
        None, description="also write the end-of-run summary as JSON to this file"
    )
    outputs: Literal["files", "stdout"] = Field("files", description="files or stdout")
    input: str | None = Field(
        None,
        description=(
            "read transactions from this JSON Lines file, directory or glob (gzip too)"
            " instead of the generator; the run ends at the last line"
        ),
    )
    label_field: str = Field(
        "label",
        min_length=1,
        description=(
            "the field holding each event's fraud label for the summary's PR-AUC, precision and"
            " recall: 0/1 (or false/true, unless it is the wire format's own label)"
        ),
    )

    @field_validator("state_ttl", "max_future_skew", mode="before")
    @classmethod
    def _ttl(cls, v: object) -> float:
        return parse_duration(v)

    @field_validator("allowed_lateness", mode="before")
    @classmethod
    def _lateness(cls, v: object) -> float:
        return parse_duration(v, allow_zero=True)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        v = v.strip().lower()
        if not _DEVICE.match(v):
            raise ValueError("expected cpu, cuda, cuda:N or auto")
        return v

    @field_validator("model")
    @classmethod
    def _model_exists(cls, v: Path) -> Path:
        if not v.is_file():
            raise ValueError(f"no model file at {v}")
        return v

    @property
    def model_name(self) -> str:
        """The model id shown in predictions."""
        return self.model_id or self.model.stem

    # --- Kafka (used when KAFKA_BOOTSTRAP_SERVERS is set) ---------------------------------
    kafka_bootstrap_servers: str | None = Field(
        None,
        validation_alias=AliasChoices("FRAUD_KAFKA_BOOTSTRAP_SERVERS", "kafka_bootstrap_servers"),
        description="Kafka brokers host:port,... (also KAFKA_BOOTSTRAP_SERVERS); unset: embedded",
    )
    topic_transactions: str = Field("transactions", min_length=1, description="input topic")
    topic_predictions: str = Field("predictions", min_length=1, description="predictions topic")
    topic_dead_letters: str = Field("dead-letters", min_length=1, description="dead-letter topic")
    topic_control: str = Field("model-control", min_length=1, description="model control topic")
    start: Literal["earliest", "latest"] = Field(
        "earliest", description="where a new run starts reading: earliest or latest"
    )
    on_data_loss: Literal["fail", "skip"] = Field(
        "fail",
        description=(
            "input deleted before it was read (retention): fail (stop, naming the gap) or skip"
            " (continue at the earliest offset; logged and counted)"
        ),
    )
    kafka_stop_at_end: bool = Field(
        False, description="stop once every input partition is read to its end (replays, tests)"
    )
    kafka_properties: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        repr=False,  # may hold credentials
        description='librdkafka properties as a JSON object, e.g. {"security.protocol":"SSL"}',
    )
    kafka_config_file: Path | None = Field(
        None, description="librdkafka properties file (key=value lines, # comments)"
    )
    kafka_max_message_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="largest Kafka message read or written, in bytes"
    )
    kafka_delivery: Literal["exactly-once", "at-least-once"] = Field(
        "at-least-once",
        description=(
            "exactly-once: each state partition writes in Kafka transactions, committed at each"
            " snapshot (FRAUD_SNAPSHOT_INTERVAL; needs FRAUD_RECOVERY_DIR) and every"
            " FRAUD_KAFKA_COMMIT_INTERVAL, read them with isolation.level=read_committed;"
            " at-least-once: a crash may write outputs again"
        ),
    )
    kafka_commit_interval: float = Field(
        1.0,
        ge=0,
        description=(
            "exactly-once: seconds between commits of every partition's transaction, made in"
            " the background at each multiple of it in wall-clock time (0: only at"
            " snapshots); a read_committed reader sees a prediction at most about this much"
            " later"
        ),
    )
    kafka_transactional_id: str | None = Field(
        None,
        description=(
            "exactly-once: prefix of the transactional.id (+ '-<partition>') and the consumer"
            " group holding the committed progress (default: bytewax-fraud-<predictions topic>)"
        ),
    )

    @field_validator("kafka_config_file")
    @classmethod
    def _kafka_config_file_exists(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"no Kafka properties file at {v}")
        return v

    # --- Operations ---------------------------------------------------------------------------
    metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="serve Prometheus metrics (/metrics) and liveness (/livez) here (unset: off)",
    )
    stall_timeout: float | None = Field(
        None,
        description=(
            "no epoch completed for this long (a peer unreachable or hung) fails /livez and,"
            " with FRAUD_STALL_EXIT, stops the process (e.g. 60s, 2m; 0: off; unset: 60 s, or"
            " 3 epoch intervals if longer)"
        ),
    )
    stall_exit: bool = Field(
        True,
        description="exit (status 2) once FRAUD_STALL_TIMEOUT passes; false: only /livez fails",
    )

    @field_validator("stall_timeout", mode="before")
    @classmethod
    def _stall_timeout(cls, v: object) -> float | None:
        return None if v is None else parse_duration(v, allow_zero=True)


def _describe(field: str) -> str:
    info = Settings.model_fields.get(field)
    return info.description or "" if info else ""


def load_settings(**overrides: Any) -> Settings:
    """Build the settings, or raise `SettingsError` listing each bad value and its fix."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            name = f"FRAUD_{field.upper()}"
            got = err.get("input")
            if field == "kafka_properties":  # may hold credentials: never echo them
                got = "<hidden>"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                lines.append(f"unknown setting {field!r}: remove it (see --help for the list)")
                continue
            lines.append(f"{name}={got!r}: {msg}. Fix: set {name} to {_describe(field)}.")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None


def settings_help() -> str:
    """A table of every setting, its variable, default and meaning (for --help and the README)."""
    rows = []
    for name, info in Settings.model_fields.items():
        default = info.get_default(call_default_factory=True)
        rows.append(f"  FRAUD_{name.upper():<22} {default!s:<28} {info.description or ''}")
    return "Settings (environment variables):\n" + "\n".join(rows)
