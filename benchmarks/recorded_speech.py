"""Recorded human speech for the CPU benchmarks, cut into 3-12 s clips at speech pauses.

The suite's own clips are Piper speaking sentences the model is known to get right:
clean, evenly paced, and flattering to Whisper. Issue 17 asks for figures "as a user
would" get them, so :func:`recorded_clips` supplies real recordings instead. No model
hub is reachable from the benchmark machines, but PyPI is, and the MIT-licensed sdist
of ``silero-vad`` 6.2.3 carries two of them:

- ``tests/data/test.wav``: 60 s of a lecture, 16 kHz mono;
- ``examples/c++/aepyx.wav``: 169 s of a TV news report, 16 kHz mono.

The sdist is fetched once with pip, checked against its sha256 (a changed file would
silently change every figure), and cached under ``~/.cache/voxserve/bench-audio/``
(``$VOXSERVE_BENCH_AUDIO`` overrides). Only those two members are read from it, by
exact name, and written under names chosen here, so that no path inside the archive
decides where anything lands.

Cutting: Silero VAD (the server's own :func:`models.windowing.speech_regions`, 300 ms
pauses, 200 ms padding) finds speech regions; consecutive regions are grouped greedily
while the group spans at most 12 s, and groups shorter than 3 s are dropped. A single
region longer than 12 s (one breath of over 12 s, which the news reader does) is
skipped rather than cut mid-word: :attr:`Cutting.skipped_seconds` says how much audio
that left out. Everything is deterministic, so every run sends the same clips.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from models.windowing import VadSettings, speech_regions
from tests.speech import wav_bytes as pcm16_wav

RATE = 16_000
MIN_CLIP_SECONDS = 3.0
MAX_CLIP_SECONDS = 12.0
VAD = VadSettings(min_silence_ms=300, speech_pad_ms=200)
"""Pauses of 300 ms end a region (sentence and clause breaks, not breaths between words)."""

SDIST_REQUIREMENT = "silero-vad==6.2.3"
SDIST_NAME = "silero_vad-6.2.3.tar.gz"
SDIST_SHA256 = "d7a23b09202be4953915cb9173089bb307eed0418a9bd4794d9ec5af07fa1996"
RECORDINGS: Mapping[str, str] = {
    "lecture": "silero_vad-6.2.3/tests/data/test.wav",
    "news": "silero_vad-6.2.3/examples/c++/aepyx.wav",
}
"""Source name -> member of the sdist; the order is the order of the clips."""
CACHE_ENV = "VOXSERVE_BENCH_AUDIO"

Audio = npt.NDArray[np.float32]


@dataclass(frozen=True)
class RecordedClip:
    """One clip: a 16-bit mono 16 kHz WAV, where it comes from, and how long it is."""

    wav: bytes
    source: str
    start_s: float
    seconds: float


@dataclass(frozen=True)
class Cutting:
    """The groups of speech regions kept, and what the rules left out (for the report)."""

    groups: list[tuple[int, int]]
    """``(start, end)`` sample ranges, each spanning 3-12 s, in order."""
    skipped_regions: int
    """Regions over 12 s, left out whole."""
    skipped_seconds: float
    """Audio in those regions and in groups shorter than 3 s."""


# -- cutting -------------------------------------------------------------------------------


def group_regions(
    regions: Sequence[tuple[int, int]],
    *,
    rate: int = RATE,
    min_seconds: float = MIN_CLIP_SECONDS,
    max_seconds: float = MAX_CLIP_SECONDS,
) -> Cutting:
    """Group consecutive speech regions greedily into spans of ``min..max`` seconds.

    A group grows while its span (first start to last end, pauses included) stays within
    ``max_seconds``; a region longer than that on its own ends the group before it and is
    skipped, so that no clip is cut inside speech.
    """
    limit = round(max_seconds * rate)
    floor = round(min_seconds * rate)
    groups: list[tuple[int, int]] = []
    skipped_regions = 0
    skipped_samples = 0
    current: tuple[int, int] | None = None

    def close() -> None:
        nonlocal skipped_samples
        if current is None:
            return
        if current[1] - current[0] >= floor:
            groups.append(current)
        else:
            skipped_samples += current[1] - current[0]

    for start, end in regions:
        if end - start > limit:
            close()
            current = None
            skipped_regions += 1
            skipped_samples += end - start
        elif current is not None and end - current[0] <= limit:
            current = (current[0], end)
        else:
            close()
            current = (start, end)
    close()
    return Cutting(groups, skipped_regions, skipped_samples / rate)


def wav_bytes(audio: Audio) -> bytes:
    """16-bit mono 16 kHz WAV of float samples in [-1, 1] (as ``decode_audio`` gives)."""
    samples = np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)
    return pcm16_wav(samples, RATE)


def cut_clips(audio: Audio, source: str) -> tuple[list[RecordedClip], Cutting]:
    """``audio`` (16 kHz float) cut at speech pauses into 3-12 s clips, and the cutting."""
    cutting = group_regions(speech_regions(audio, VAD))
    clips = [
        RecordedClip(
            wav=wav_bytes(audio[start:end]),
            source=source,
            start_s=round(start / RATE, 3),
            seconds=(end - start) / RATE,
        )
        for start, end in cutting.groups
    ]
    return clips, cutting


# -- the recordings ------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where the sdist and the extracted recordings live between runs."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "voxserve" / "bench-audio"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path: Path, expected: str = SDIST_SHA256) -> None:
    """Refuse a tarball whose content is not the one the figures were measured on."""
    actual = sha256_of(path)
    if actual != expected:
        raise RuntimeError(f"{path}: sha256 {actual}, expected {expected}; delete it to refetch")


def fetch_sdist(cache: Path) -> Path:
    """The checked ``silero-vad`` sdist in ``cache``, downloaded with pip the first time."""
    tarball = cache / SDIST_NAME
    if not tarball.exists():
        cache.mkdir(parents=True, exist_ok=True)
        print(f"[recorded_speech] downloading {SDIST_REQUIREMENT} to {cache}", file=sys.stderr)
        with tempfile.TemporaryDirectory(dir=cache) as staging:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--no-binary",
                    ":all:",
                    SDIST_REQUIREMENT,
                    "-d",
                    staging,
                ],
                check=True,
                stdout=sys.stderr,
            )
            (Path(staging) / SDIST_NAME).replace(tarball)
    check_sha256(tarball)
    return tarball


def extract_members(
    tarball: Path, members: Mapping[str, str], destination: Path
) -> dict[str, Path]:
    """Write the regular-file members named in ``members`` (name -> member) to
    ``destination/<name>.wav``; nothing else in the archive is read.

    Members are looked up by exact name and must be regular files: a link, a device or
    a ``../`` path in the archive can neither be extracted nor redirect the write.
    """
    destination.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    with tarfile.open(tarball, "r:*") as archive:
        for name, member_name in members.items():
            member = archive.getmember(member_name)  # KeyError if absent
            if not member.isfile():
                raise RuntimeError(f"{tarball}: {member_name} is not a regular file")
            source = archive.extractfile(member)
            if source is None:
                raise RuntimeError(f"{tarball}: {member_name} has no content")
            path = destination / f"{name}.wav"
            partial = path.with_suffix(".part")
            with source, partial.open("wb") as out:
                out.write(source.read())
            partial.replace(path)
            paths[name] = path
    return paths


def recordings(cache: Path | None = None, tarball: Path | None = None) -> dict[str, Path]:
    """The two recordings as WAV files, from ``tarball`` when given (tests, no network),
    else from the cached or freshly downloaded sdist."""
    cache = cache or cache_dir()
    if tarball is None:
        tarball = fetch_sdist(cache)
    else:
        check_sha256(tarball)
    wanted = {name: cache / f"{name}.wav" for name in RECORDINGS}
    if all(path.exists() for path in wanted.values()):
        return wanted
    return extract_members(tarball, RECORDINGS, cache)


def recorded_clips(
    cache: Path | None = None, tarball: Path | None = None
) -> tuple[list[RecordedClip], dict[str, Cutting]]:
    """Every clip of both recordings, in source order, and each recording's cutting."""
    from faster_whisper.audio import decode_audio

    clips: list[RecordedClip] = []
    cuttings: dict[str, Cutting] = {}
    for name, path in recordings(cache, tarball).items():
        audio = np.asarray(decode_audio(str(path), sampling_rate=RATE), dtype=np.float32)
        found, cuttings[name] = cut_clips(audio, name)
        clips.extend(found)
    return clips, cuttings
