"""One typed settings schema, read once at start-up and passed into ``create_app``.

Precedence, lowest first: the defaults below, a config file (TOML or JSON, given by
``--config`` or ``VOXSERVE_CONFIG``), ``VOXSERVE_*`` environment variables, then
command-line flags. Tests build :class:`Settings` directly.

Scheduler knobs (named as Triton's dynamic batcher names them) are server-wide
here and can be overridden per model in the catalog.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from models.registry import ModelSpec
from models.voices import EMBEDDED_VOICES, EngineSpec, VoiceSpec

ENV_PREFIX = "VOXSERVE_"


class CatalogModel(ModelSpec, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A catalog entry: how to load the model and how to schedule its work."""

    max_batch_size: int | None = None
    max_queue_delay_ms: float | None = None
    max_queue_size: int | None = None
    max_queue_time: float | None = None


class SchedulerConfig(msgspec.Struct, frozen=True):
    """The batching knobs in force for one model."""

    max_batch_size: int
    max_queue_delay_ms: float
    max_queue_size: int
    max_queue_time: float = 30.0
    """Seconds an item may wait for its batch; past that its request gets 503."""


DEFAULT_CATALOG = (CatalogModel(id="whisper-1", weights="embedded:tiny.en"),)

VOICE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class SpeechModel(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A speech model of the catalog: a name clients send and the voices it has."""

    id: str
    voices: dict[Annotated[str, msgspec.Meta(pattern=VOICE_NAME)], VoiceSpec]

    def __post_init__(self) -> None:
        if not self.voices:
            raise ValueError(f"speech model {self.id!r} must have at least one voice")


DEFAULT_SPEECH_CATALOG = (
    SpeechModel(id="tts-1", voices=EMBEDDED_VOICES),
    SpeechModel(id="tts-1-hd", voices=EMBEDDED_VOICES),
)
"""Both tiers speak with the embedded voices until a catalog says otherwise."""


class Settings(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    device: Literal["auto", "cpu", "cuda"] = "auto"
    compute_type: str = "auto"
    """``auto``: float16 on a GPU, int8 on the CPU."""
    cpu_threads: int = 0
    """Inference threads per model on the CPU; 0 means the cores this process may use."""
    model_cache_dir: str | None = None
    """Where hub downloads go; ``None`` is the hub client's default cache."""

    max_batch_size: int = 8
    max_queue_delay_ms: float = 5.0
    max_queue_size: int = 64
    """Requests admitted per model and not yet answered; the next one gets 429."""
    max_queue_time: float = 30.0
    """Seconds a piece of work may wait in a model's queue; past that its request gets
    503 with ``Retry-After`` (Triton's queue-policy timeout with REJECT)."""
    max_concurrent_decodes: int = 4
    """Uploads decoded at once across all models; the rest wait their turn. Bounds the
    memory and CPU that decoding takes away from the models."""

    api_keys: tuple[str, ...] = ()
    """Bearer keys that may call the API (``VOXSERVE_API_KEYS``: comma-separated).
    With none here or in ``api_key_file``, the server is open (and says so at start)."""
    api_key_file: str | None = None
    """A file with one key per line (blank lines and ``#`` comments skipped)."""
    public_paths: tuple[str, ...] = ("/health", "/ready", "/metrics")
    """Paths served without a key: the probes and the metrics scrape."""
    cors_origins: tuple[str, ...] = ()
    """Browser origins allowed by CORS; empty means CORS is off."""

    drain_seconds: float = 30.0
    """On SIGTERM: how long work in flight may take to finish before the process exits."""
    log_format: Literal["text", "json"] = "text"
    """``json``: one JSON object per line, for log collectors."""

    max_upload_bytes: int = 26_214_400
    """OpenAI's 25 MiB limit on the ``file`` field."""
    max_audio_seconds: float = 4 * 3600.0
    """Audio longer than this is refused: by its header, its packets, or while decoding."""
    max_decoded_bytes: int = 8 << 30
    """Bytes the decoder may produce for one upload (native rate, all channels): bounds
    the work a small file can demand. 8 GiB is 4 h of 48 kHz stereo float."""

    models: tuple[CatalogModel, ...] = DEFAULT_CATALOG
    speech_models: tuple[SpeechModel, ...] = DEFAULT_SPEECH_CATALOG

    def __post_init__(self) -> None:
        ids = [m.id for m in self.models] + [m.id for m in self.speech_models]
        if len(set(ids)) != len(ids):
            raise ValueError(f"model ids must be unique, got {ids}")
        positive = (
            "max_batch_size",
            "max_queue_size",
            "max_upload_bytes",
            "max_decoded_bytes",
            "max_concurrent_decodes",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_queue_delay_ms < 0:
            raise ValueError("max_queue_delay_ms must not be negative")
        if self.max_queue_time <= 0 or self.drain_seconds < 0:
            raise ValueError("max_queue_time must be positive and drain_seconds not negative")
        if any(not path.startswith("/") for path in self.public_paths):
            raise ValueError("public_paths must be absolute paths")
        if self.max_audio_seconds <= 0:
            raise ValueError("max_audio_seconds must be positive")

    def scheduler_config(self, model: CatalogModel) -> SchedulerConfig:
        def pick(own: Any, default: Any) -> Any:
            return default if own is None else own

        return SchedulerConfig(
            max_batch_size=pick(model.max_batch_size, self.max_batch_size),
            max_queue_delay_ms=pick(model.max_queue_delay_ms, self.max_queue_delay_ms),
            max_queue_size=pick(model.max_queue_size, self.max_queue_size),
            max_queue_time=pick(model.max_queue_time, self.max_queue_time),
        )

    def model_spec(self, model: CatalogModel) -> ModelSpec:
        """The entry's load spec with the server-wide hardware defaults filled in."""
        return msgspec.structs.replace(
            model,
            device=model.device or self.device,
            compute_type=model.compute_type or self.compute_type,
            cpu_threads=model.cpu_threads or self.cpu_threads or None,
        )

    def speech_config(self) -> SchedulerConfig:
        """The batching knobs of every speech engine (server-wide)."""
        return SchedulerConfig(
            max_batch_size=self.max_batch_size,
            max_queue_delay_ms=self.max_queue_delay_ms,
            max_queue_size=self.max_queue_size,
            max_queue_time=self.max_queue_time,
        )

    def engine_spec(self, voice: VoiceSpec) -> EngineSpec:
        """The voice's engine with the server-wide hardware defaults filled in."""
        return msgspec.structs.replace(
            voice.engine(),
            device=voice.device or self.device,
            cpu_threads=voice.cpu_threads or self.cpu_threads or None,
        )


class SettingsError(ValueError):
    """The configuration is invalid; the message says where."""


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Read the config file, then the environment, then explicit overrides."""
    env = os.environ if env is None else env
    config_file = config_file or env.get(f"{ENV_PREFIX}CONFIG")
    raw: dict[str, Any] = _read_config_file(Path(config_file)) if config_file else {}
    raw.update(_from_env(env))
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return msgspec.convert(raw, Settings, strict=False)
    except (msgspec.ValidationError, ValueError) as exc:
        raise SettingsError(f"invalid settings: {exc}") from exc


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path}: {exc}") from exc
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"config file {path} is not valid: {exc}") from exc
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path} must hold a table of settings")
    return data


LIST_SETTINGS = ("api_keys", "public_paths", "cors_origins")
"""Settings whose environment variable is a comma-separated list."""


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """Scalar settings from ``VOXSERVE_<NAME>``; the two catalogs take JSON, lists commas."""
    fields = {f.name for f in msgspec.structs.fields(Settings)}
    raw: dict[str, Any] = {}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = key.removeprefix(ENV_PREFIX).lower()
        if name in ("models", "speech_models"):
            try:
                raw[name] = json.loads(value)
            except json.JSONDecodeError as exc:
                raise SettingsError(f"{key} must be a JSON list of models: {exc}") from exc
        elif name in LIST_SETTINGS:
            raw[name] = [part.strip() for part in value.split(",") if part.strip()]
        elif name in fields:
            raw[name] = value
    return raw
