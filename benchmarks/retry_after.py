"""Does a client that obeys ``Retry-After`` get in when it comes back?

Run from the repository root (so that ``tests.speech`` is importable)::

    python -m benchmarks.retry_after [--trials 6] [--kind transcription|speech]

One JSON document goes to stdout; progress goes to stderr.

A real ``python -m server serve`` process (:mod:`benchmarks.server_process`) serves
``whisper-1`` (embedded tiny.en, int8, 2 CPU threads) with one place in its queue
(``max_queue_size`` 1) and no speech models. One long transcription (every sentence of
``tests.speech.SENTENCES`` twice, about 70 s of audio) is sent first to warm the model.
Then, each trial: a *hog* sends the long file and holds the place; half a second later
a *client* sends one sentence. If refused with 429, it sleeps ``Retry-After`` seconds
and sends it again, once. With ``--kind speech`` the server serves the embedded voices
instead, the hog asks for every sentence twice (about 1,300 characters, of which a
speech request keeps four sentences queued) and the client for one sentence.
Reported: how many first tries were refused, how many of the obeying retries were
admitted (``admitted_fraction``), the ``Retry-After`` values
and how long the hog held the place. To compare with another version of the server,
run this file from a checkout of that version (the server runs from the directory
this file is in).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import httpx

from benchmarks.server_process import REPO_ROOT, serving
from tests.speech import SENTENCES, spoken_wav


def _transcribe(base_url: str, wav: bytes) -> httpx.Response:
    return httpx.post(
        f"{base_url}/v1/audio/transcriptions",
        files={"file": ("a.wav", wav)},
        data={"model": "whisper-1"},
        timeout=300,
    )


def _speak(base_url: str, text: str) -> httpx.Response:
    return httpx.post(
        f"{base_url}/v1/audio/speech",
        json={"model": "tts-1", "voice": "echo", "input": text, "response_format": "pcm"},
        timeout=300,
    )


def _trial(
    long: Callable[[], httpx.Response], short: Callable[[], httpx.Response]
) -> dict[str, Any]:
    held: dict[str, float] = {}

    def hog() -> None:
        started = time.monotonic()
        held["status"] = long().status_code
        held["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=hog)
    thread.start()
    time.sleep(0.5)  # the hog's request is in and admitted
    first = short()
    result: dict[str, Any] = {"first": first.status_code}
    if first.status_code == 429:
        retry_after = int(first.headers["retry-after"])
        time.sleep(retry_after)
        result.update(retry_after=retry_after, retry=short().status_code)
    thread.join()
    result.update(hog_status=held.get("status"), hog_seconds=round(held.get("seconds", 0), 2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--kind", choices=["transcription", "speech"], default="transcription")
    args = parser.parse_args()
    speech = args.kind == "speech"
    settings: dict[str, Any] = {"max_queue_size": 1, "max_queue_time": 300.0}
    if speech:
        settings.update(models=[], speech_models=None)
    with serving(**settings) as (_, base_url):
        if speech:
            text = " ".join(SENTENCES * 2)
            long = partial(_speak, base_url, text)
            short = partial(_speak, base_url, SENTENCES[0])
        else:
            long = partial(_transcribe, base_url, spoken_wav(*(SENTENCES * 2), pause_seconds=1.0))
            short = partial(_transcribe, base_url, spoken_wav(SENTENCES[0]))
        assert long().status_code == 200  # warm-up: the rate is measured
        trials = []
        for number in range(args.trials):
            trials.append(_trial(long, short))
            print(f"trial {number + 1}: {trials[-1]}", file=sys.stderr)
    refused = [t for t in trials if t["first"] == 429]
    admitted = sum(1 for t in refused if t["retry"] == 200)
    report = {
        "server_root": str(REPO_ROOT),
        "kind": args.kind,
        "trials": len(trials),
        "refused": len(refused),
        "admitted_after_obeying": admitted,
        "admitted_fraction": round(admitted / len(refused), 2) if refused else None,
        "retry_after_s": [t["retry_after"] for t in refused],
        "hog_seconds": [t["hog_seconds"] for t in trials],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
