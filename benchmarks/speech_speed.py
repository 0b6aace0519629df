"""How ``speed`` is kept: length ratio and Whisper round trip per voice per speed.

Run from the repository root::

    python -m benchmarks.speech_speed [--voices alloy onyx] [--speeds 0.25 0.5 ... 4.0]
                                      [--native]

One JSON document goes to stdout; progress goes to stderr.

A real ``voxserve serve`` (the embedded default: whisper-1 and the embedded voices)
speaks three sentences of ``tests.speech.SENTENCES`` as WAV at each speed; per voice
and speed:

- ``ratio``: the audio's length over (its length at 1.0) / speed; 1 is the contract;
- ``wer``: the words lost when the same server's whisper-1 (Whisper tiny.en) reads it
  back;
- ``stretch_ms_per_s``: :func:`models.tempo.stretch` alone on the voice's audio at 1.0,
  milliseconds per second of output (best of 3, one thread).

``--native`` adds, for comparison, the same text through the backend alone with the
speed fed to the model's own pace input (what ``speed`` did before :mod:`models.tempo`),
as ``native_ratio`` and ``native_wer`` (read back by the same server).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from benchmarks.server_process import serving
from models.tempo import stretch
from tests.speech import SENTENCES, decode_native, wav_bytes, word_error_rate

JSON = dict[str, Any]
TEXT = " ".join(SENTENCES[11:14])
SPEEDS = (0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0)
BACKENDS = {"alloy": "hibari", "nova": "hibari", "shimmer": "hibari"}
"""The embedded catalog's names on hibari heart; the others are Piper joe."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def float_wav(samples: npt.NDArray[np.float32], rate: int) -> bytes:
    return wav_bytes((np.clip(samples, -1, 1) * 32767).astype(np.int16), rate)


def transcribe(http: httpx.Client, audio: bytes) -> float:
    response = http.post(
        "/v1/audio/transcriptions",
        files={"file": ("speech.wav", audio, "audio/wav")},
        data={"model": "whisper-1"},
    )
    response.raise_for_status()
    wer = word_error_rate([(TEXT, response.json()["text"])])
    assert wer is not None
    return round(wer, 3)


def stretch_cost(samples: npt.NDArray[np.float32], rate: int, speed: float) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        out = stretch(samples, rate, speed)
        best = min(best, time.perf_counter() - start)
    return round(best * 1000 / (len(out) / rate), 2)


def native(voice: str, speeds: Sequence[float]) -> tuple[int, dict[float, npt.NDArray[np.float32]]]:
    """The text through the backend alone, sentence by sentence, speed as model pace:
    the sample rate and the audio per speed."""
    from models.base import SpeechItem
    from models.voices import HEART, JOE, build_speech_backend

    backend = build_speech_backend(HEART if BACKENDS.get(voice) == "hibari" else JOE)
    backend.load()
    out = {}
    for speed in speeds:
        parts = [
            backend.synthesize_batch([SpeechItem(text, speed=speed)])[0]
            for text in SENTENCES[11:14]
        ]
        out[speed] = np.concatenate(parts)
    return backend.sample_rate, out


def measure(http: httpx.Client, voice: str, speeds: Sequence[float], with_native: bool) -> JSON:
    audio: dict[float, bytes] = {}
    for speed in sorted({1.0, *speeds}):
        body = {"model": "tts-1", "voice": voice, "input": TEXT, "response_format": "wav"}
        response = http.post("/v1/audio/speech", json={**body, "speed": speed})
        response.raise_for_status()
        audio[speed] = response.content
    normal, rate, _ = decode_native(audio[1.0])
    rows: list[JSON] = []
    native_rate, natives = native(voice, sorted({1.0, *speeds})) if with_native else (0, {})
    for speed in speeds:
        samples = decode_native(audio[speed])[0]
        row: JSON = {
            "speed": speed,
            "seconds": round(len(samples) / rate, 3),
            "ratio": round(len(samples) * speed / len(normal), 4),
            "wer": transcribe(http, audio[speed]),
            "stretch_ms_per_s": stretch_cost(normal, rate, speed) if speed != 1.0 else 0.0,
        }
        if natives:
            row["native_ratio"] = round(len(natives[speed]) * speed / len(natives[1.0]), 4)
            row["native_wer"] = transcribe(http, float_wav(natives[speed], native_rate))
        log(f"{voice} {json.dumps(row)}")
        rows.append(row)
    return {"voice": voice, "seconds_at_1": round(len(normal) / rate, 3), "speeds": rows}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--voices", nargs="+", default=["alloy", "onyx"])
    parser.add_argument("--speeds", nargs="+", type=float, default=list(SPEEDS))
    parser.add_argument("--native", action="store_true", help="compare the model's own pace")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with (
        serving(speech_models=None, models=None) as (_, url),
        httpx.Client(base_url=url, timeout=600) as http,
    ):
        voices = [measure(http, voice, args.speeds, args.native) for voice in args.voices]
    report = {
        "text": TEXT,
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "voices": voices,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
