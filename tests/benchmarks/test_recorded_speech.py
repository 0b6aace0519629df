"""The transcription benchmark's recorded clips, their safe extraction, and its CPU pinning.

What decides the figures is checked here without the network and without a server:
how recordings are cut (3-12 s, at pauses, the same every run), that only the two
named recordings ever leave the downloaded archive, how the CPUs are split between
the server and the load client, and what each server is configured with. The cutter
runs on real speech (the suite's Piper sentences), through the server's own VAD.
"""

from __future__ import annotations

import io
import json
import tarfile
import wave
from pathlib import Path

import numpy as np
import pytest
from faster_whisper.audio import decode_audio

from benchmarks.recorded_speech import (
    RATE,
    RECORDINGS,
    cache_dir,
    check_sha256,
    cut_clips,
    extract_members,
    group_regions,
    recordings,
)
from benchmarks.transcription_load import (
    Clip,
    ServerConfig,
    parse_args,
    pinning_plan,
    text_scores,
)
from tests.speech import SENTENCES, spoken_wav


def seconds(*spans: tuple[float, float]) -> list[tuple[int, int]]:
    return [(round(a * RATE), round(b * RATE)) for a, b in spans]


# -- cutting -------------------------------------------------------------------------------


def test_regions_are_grouped_greedily_within_12_s_and_long_ones_are_skipped() -> None:
    regions = seconds(
        (0.0, 2.0),  # } one group: 0-9 s
        (2.5, 6.0),  # }
        (6.2, 9.0),  # }
        (9.5, 13.0),  # would make 0-13 s: starts the next group, 9.5-14 s
        (13.2, 14.0),
        (15.0, 29.0),  # 14 s of speech without a pause: skipped whole
        (29.5, 31.0),  # 1.5 s alone before the next long pause: too short, dropped
        (40.0, 44.0),
    )
    cutting = group_regions(regions)
    assert cutting.groups == seconds((0.0, 9.0), (9.5, 14.0), (40.0, 44.0))
    assert cutting.skipped_regions == 1
    assert cutting.skipped_seconds == pytest.approx(14.0 + 1.5)


def test_a_region_of_exactly_12_s_is_kept_and_one_sample_more_is_not() -> None:
    limit = 12 * RATE
    assert group_regions([(0, limit)]).groups == [(0, limit)]
    assert group_regions([(0, limit + 1)]).groups == []


@pytest.fixture(scope="module")
def spoken() -> np.ndarray:
    """About 40 s of real speech, sentences 0.6-1.0 s apart, decoded to 16 kHz float."""
    wavs = [
        spoken_wav(*SENTENCES[:5], pause_seconds=0.6),
        spoken_wav(*SENTENCES[5:10], pause_seconds=1.0),
        spoken_wav(*SENTENCES[10:], pause_seconds=0.7),
    ]
    parts = [np.asarray(decode_audio(io.BytesIO(w), sampling_rate=RATE)) for w in wavs]
    gap = np.zeros(RATE, dtype=np.float32)
    return np.concatenate([parts[0], gap, parts[1], gap, parts[2]]).astype(np.float32)


def test_speech_is_cut_into_3_to_12_s_clips_at_pauses_the_same_every_time(
    spoken: np.ndarray,
) -> None:
    clips, cutting = cut_clips(spoken, "piper")
    again, _ = cut_clips(spoken.copy(), "piper")

    assert len(clips) >= 3
    assert [c.wav for c in again] == [c.wav for c in clips]
    for clip, (start, end) in zip(clips, cutting.groups, strict=True):
        assert 3.0 <= clip.seconds <= 12.0
        assert clip.source == "piper"
        assert clip.start_s == pytest.approx(start / RATE, abs=1e-3)
        with wave.open(io.BytesIO(clip.wav)) as reader:
            assert (reader.getnchannels(), reader.getsampwidth()) == (1, 2)
            assert reader.getframerate() == RATE
            assert reader.getnframes() == end - start
            samples = np.frombuffer(reader.readframes(end - start), dtype="<i2")
        expected = np.clip(np.round(spoken[start:end] * 32768.0), -32768, 32767)
        assert np.array_equal(samples, expected)
    starts = [start for start, _ in cutting.groups]
    ends = [end for _, end in cutting.groups]
    assert all(end <= next_start for end, next_start in zip(ends, starts[1:], strict=False))


# -- the archive ---------------------------------------------------------------------------


def add_file(archive: tarfile.TarFile, name: str, content: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    archive.addfile(info, io.BytesIO(content))


def test_only_the_two_named_recordings_leave_the_archive(tmp_path: Path) -> None:
    tarball = tmp_path / "evil.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        add_file(archive, "../x", b"escaped")
        add_file(archive, "silero_vad-6.2.3/examples/c++/aepyx_8k.wav", b"other")
        for name, member in RECORDINGS.items():
            add_file(archive, member, name.encode())
        add_file(archive, "../../y.wav", b"escaped too")
    out = tmp_path / "deep" / "out"

    paths = extract_members(tarball, RECORDINGS, out)

    assert paths == {name: out / f"{name}.wav" for name in RECORDINGS}
    assert sorted(p.name for p in out.iterdir()) == ["lecture.wav", "news.wav"]
    assert {name: path.read_bytes() for name, path in paths.items()} == {
        name: name.encode() for name in RECORDINGS
    }
    everything = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")}
    written = {"deep", "deep/out", "deep/out/lecture.wav", "deep/out/news.wav"}
    assert everything == {"evil.tar.gz", *written}


def test_a_link_under_a_recordings_name_is_refused(tmp_path: Path) -> None:
    tarball = tmp_path / "links.tar"
    with tarfile.open(tarball, "w") as archive:
        link = tarfile.TarInfo(RECORDINGS["lecture"])
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        archive.addfile(link)
        add_file(archive, RECORDINGS["news"], b"news")
    out = tmp_path / "out"

    with pytest.raises(RuntimeError, match="not a regular file"):
        extract_members(tarball, RECORDINGS, out)
    assert list(out.iterdir()) == []


def test_an_archive_other_than_the_pinned_sdist_is_refused_before_reading(
    tmp_path: Path,
) -> None:
    tarball = tmp_path / "silero_vad-6.2.3.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        for name, member in RECORDINGS.items():
            add_file(archive, member, name.encode())

    with pytest.raises(RuntimeError, match="sha256"):
        check_sha256(tarball)
    with pytest.raises(RuntimeError, match="sha256"):
        recordings(cache=tmp_path / "cache", tarball=tarball)
    assert not (tmp_path / "cache").exists()


def test_the_cache_folder_follows_voxserve_bench_audio(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("VOXSERVE_BENCH_AUDIO", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("VOXSERVE_BENCH_AUDIO")
    assert cache_dir() == Path.home() / ".cache" / "voxserve" / "bench-audio"


# -- pinning and the servers' settings -------------------------------------------------------


def test_the_load_client_gets_the_first_cpu_and_the_server_the_rest() -> None:
    assert pinning_plan({0}) is None
    assert pinning_plan(set()) is None
    assert pinning_plan({0, 1}) == ([1], [0])
    assert pinning_plan({3, 0, 2, 1}) == ([1, 2, 3], [0])
    assert pinning_plan({7, 5, 2}) == ([5, 7], [2])


def test_each_server_gets_its_beam_size_and_the_extra_settings_last() -> None:
    config = ServerConfig(
        name="batching",
        max_batch_size=16,
        max_queue_delay_ms=5.0,
        cpu_threads=1,
        beam_size=1,
        cpus=(1,),
        extra_env=(("VOXSERVE_MAX_QUEUE_SIZE", "64"), ("VOXSERVE_CPU_THREADS", "3")),
    )
    env = config.env()
    assert json.loads(env["VOXSERVE_MODELS"]) == [
        {"id": "whisper-1", "weights": "embedded:tiny.en", "beam_size": 1}
    ]
    assert env["VOXSERVE_MAX_QUEUE_SIZE"] == "64"
    assert env["VOXSERVE_CPU_THREADS"] == "3"
    assert env["VOXSERVE_MAX_BATCH_SIZE"] == "16"


def test_the_defaults_measure_recorded_speech_at_beam_5_and_1_pinned() -> None:
    args = parse_args([])
    assert (args.beam_size, args.clip_source, args.pin) == ([5, 1], "recorded", "auto")
    args = parse_args(["--beam-size", "5", "--extra-env", "A=b=c", "--extra-env", "B="])
    assert args.beam_size == [5]
    assert args.extra_env == [("A", "b=c"), ("B", "")]
    with pytest.raises(SystemExit):
        parse_args(["--extra-env", "NO_EQUALS_SIGN"])


def test_answers_are_scored_against_the_direct_text_and_the_reference_where_there_is_one() -> None:
    recorded = Clip(b"", 5.0, "news", direct_text="Good evening, and welcome.")
    synth = Clip(b"", 4.0, "synth", reference="The museum is closed.", direct_text="The museum.")

    only_recorded = text_scores([(recorded, "good evening and welcome"), (recorded, "good")])
    assert only_recorded["exact_transcripts"] == 1
    assert only_recorded["wer_vs_direct"] == pytest.approx(3 / 8)
    assert "wer" not in only_recorded

    both = text_scores([(synth, "The museum is closed.")])
    assert both["exact_transcripts"] == 0
    assert both["wer"] == 0.0
    assert both["wer_vs_direct"] == pytest.approx(2 / 2)
