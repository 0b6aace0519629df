"""Settings: defaults, config file, environment, overrides, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.catalog import CatalogModel
from server.settings import Settings, SettingsError, load_settings


def test_defaults_serve_whisper_1_on_the_embedded_model() -> None:
    settings = load_settings(env={})
    assert [m.id for m in settings.models] == ["whisper-1"]
    assert settings.models[0].weights == "embedded:tiny.en"
    assert settings.device == "auto" and settings.compute_type == "auto"
    assert settings.max_upload_bytes == 26_214_400


def test_environment_variables_are_typed_and_override_the_file(tmp_path: Path) -> None:
    config = tmp_path / "voxserve.toml"
    config.write_text(
        "max_batch_size = 4\nport = 9000\n\n"
        '[[models]]\nid = "whisper-1"\n\n'
        '[[models]]\nid = "fast"\nweights = "/models/fast"\nmax_batch_size = 32\n'
    )
    env = {
        "VOXSERVE_CONFIG": str(config),
        "VOXSERVE_MAX_BATCH_SIZE": "16",
        "VOXSERVE_MAX_QUEUE_DELAY_MS": "2.5",
        "VOXSERVE_MAX_QUEUE_SIZE": "7",
        "UNRELATED": "x",
    }
    settings = load_settings(env=env, overrides={"port": 9100, "host": None})
    assert settings.port == 9100  # the command line wins over the file
    assert settings.max_batch_size == 16  # the environment wins over the file
    assert settings.max_queue_delay_ms == 2.5 and settings.max_queue_size == 7
    whisper, fast = settings.models
    assert settings.scheduler_config(whisper).max_batch_size == 16
    assert settings.scheduler_config(fast).max_batch_size == 32  # per-model override
    assert settings.scheduler_config(fast).max_queue_size == 7


def test_models_from_a_json_environment_variable() -> None:
    env = {"VOXSERVE_MODELS": '[{"id": "a", "weights": "/w/a", "device": "cpu"}]'}
    (model,) = load_settings(env=env).models
    assert model == CatalogModel(id="a", weights="/w/a", device="cpu")


def test_model_spec_fills_in_server_wide_hardware_defaults() -> None:
    settings = Settings(device="cpu", compute_type="int8_float32", cpu_threads=3)
    spec = settings.model_spec(CatalogModel(id="m", compute_type="float32"))
    assert (spec.device, spec.compute_type, spec.cpu_threads) == ("cpu", "float32", 3)


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"VOXSERVE_MAX_BATCH_SIZE": "many"}, "max_batch_size"),
        ({"VOXSERVE_MAX_BATCH_SIZE": "0"}, "max_batch_size must be at least 1"),
        ({"VOXSERVE_DEVICE": "tpu"}, "device"),
        ({"VOXSERVE_MODELS": '[{"id": "a"}, {"id": "a"}]'}, "unique"),
        ({"VOXSERVE_MODELS": '[{"id": "a", "wieghts": "x"}]'}, "wieghts"),
        ({"VOXSERVE_MODELS": "not json"}, "VOXSERVE_MODELS"),
        ({"VOXSERVE_SPEECH_MAX_PASS_SECONDS": "0.5"}, "speech_max_pass_seconds"),
        ({"VOXSERVE_SPEECH_MAX_PASS_SECONDS": "nan"}, "speech_max_pass_seconds"),
        ({"VOXSERVE_MAX_HEADER_BYTES": "0"}, "max_header_bytes must be at least 1"),
        ({"VOXSERVE_SEND_TIMEOUT_SECONDS": "0"}, "send_timeout_seconds must be positive"),
        ({"VOXSERVE_HEADER_TIMEOUT_SECONDS": "nan"}, "header_timeout_seconds must be positive"),
    ],
)
def test_invalid_settings_say_what_is_wrong(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(SettingsError, match=fragment):
        load_settings(env=env)


def test_a_missing_or_broken_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(tmp_path / "absent.toml", env={})
    broken = tmp_path / "broken.toml"
    broken.write_text("max_batch_size = = 3")
    with pytest.raises(SettingsError, match="not valid"):
        load_settings(broken, env={})


def test_both_speech_tiers_default_to_the_embedded_voices() -> None:
    settings = load_settings(env={})
    tiers = {model.id: model.voices for model in settings.speech_models}
    assert set(tiers) == {"tts-1", "tts-1-hd"}
    for voices in tiers.values():
        backends = {name: (v.backend, v.weights) for name, v in voices.items()}
        heart, joe = ("hibari", "embedded:heart"), ("piper", "embedded:joe")
        assert backends == {  # OpenAI's 13 voices, by how each sounds
            **dict.fromkeys(("alloy", "nova", "shimmer", "coral", "sage", "marin"), heart),
            **dict.fromkeys(("echo", "fable", "onyx", "ash", "ballad", "verse", "cedar"), joe),
        }
    # Voices on the same weights share one engine; speaker and pace are not part of it.
    engines = {settings.engine_spec(v) for voices in tiers.values() for v in voices.values()}
    assert len(engines) == 2


def test_a_voice_catalog_from_a_config_file(tmp_path: Path) -> None:
    config = tmp_path / "voxserve.toml"
    config.write_text(
        '[[speech_models]]\nid = "tts-1"\n\n'
        '[speech_models.voices.alloy]\nbackend = "kokoro"\nweights = "/m/kokoro.onnx"\n'
        'voices = "/m/voices-v1.0.bin"\nspeaker = "af_alloy"\n\n'
        '[speech_models.voices.onyx]\nbackend = "piper"\nweights = "/m/libritts.onnx"\n'
        "speaker = 12\nspeed = 0.9\n"
    )
    (model,) = load_settings(config, env={}).speech_models
    alloy, onyx = model.voices["alloy"], model.voices["onyx"]
    assert (alloy.backend, alloy.speaker, alloy.voices) == (
        "kokoro",
        "af_alloy",
        "/m/voices-v1.0.bin",
    )
    assert (onyx.speaker, onyx.speed) == (12, 0.9)


@pytest.mark.parametrize(
    ("catalog", "fragment"),
    [
        ('[{"id": "t", "voices": {"alloy": {"backend": "espeak", "weights": "x"}}}]', "backend"),
        ('[{"id": "t", "voices": {"alloy": {"backend": "piper"}}}]', "weights"),
        ('[{"id": "t", "voices": {}}]', "at least one voice"),
        ('[{"id": "t", "voices": {"../etc": {"backend": "piper", "weights": "x"}}}]', "voices"),
        (
            '[{"id": "t", "voices": {"a": {"backend": "piper", "weights": "x", "speed": 0}}}]',
            "speed",
        ),
        ('[{"id": "whisper-1", "voices": {"a": {"backend": "piper", "weights": "x"}}}]', "unique"),
    ],
)
def test_an_invalid_voice_catalog_says_what_is_wrong(catalog: str, fragment: str) -> None:
    with pytest.raises(SettingsError, match=fragment):
        load_settings(env={"VOXSERVE_SPEECH_MODELS": catalog})


def test_each_preset_serves_whisper_1_on_the_engine_for_its_machine() -> None:
    """cpu: CTranslate2 int8; gpu: the torch engine on transformers weights, float16, 64
    rows of continuous batching, whatever the server-wide defaults say."""
    from models.library import LIBRARY

    cpu = load_settings(env={"VOXSERVE_PRESET": "cpu"})
    (whisper,) = cpu.models
    assert (whisper.engine, whisper.device, whisper.compute_type) == (None, "cpu", "int8")
    assert "model.bin" in LIBRARY[whisper.weights].source.files  # CTranslate2 weights
    env = {
        "VOXSERVE_PRESET": "gpu",
        "VOXSERVE_MAX_BATCH_SIZE": "4",
        "VOXSERVE_COMPUTE_TYPE": "int8",
    }
    gpu = load_settings(env=env)
    (whisper,) = gpu.models
    source = LIBRARY[whisper.weights].source
    assert source.repo == "openai/whisper-large-v3-turbo"
    assert "model.safetensors" in source.files and "model.bin" not in source.files
    spec = gpu.model_spec(whisper)
    assert (spec.engine, spec.device, spec.compute_type, spec.batching) == (
        "torch",
        "cuda",
        "float16",
        "continuous",
    )
    assert gpu.scheduler_config(whisper).max_batch_size == 64  # the running batch's rows
    assert gpu.speech_config().max_batch_size == 4  # the server-wide knob still applies there
    embedded = load_settings(env={})
    assert [(m.weights, m.engine) for m in embedded.models] == [("embedded:tiny.en", None)]
