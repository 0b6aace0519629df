"""SIGTERM with long transcriptions in flight: how long the process takes to exit, and
what every client was answered.

Starts the real server (``voxserve serve``) with ``drain_seconds``, keeps ``--requests``
transcriptions of about 70 s of speech in flight, sends SIGTERM once a model batch is
under way, and prints JSON: the exit code, the seconds from SIGTERM to exit and past the
deadline, the statuses the clients got (200 or 503 ``draining`` with ``Retry-After``),
and the tracebacks and ERROR lines in the server's log (there should be none).

    python -m benchmarks.drain --drain-seconds 5 --requests 8
"""

from __future__ import annotations

import argparse
import json
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from benchmarks.server_process import metric, serving
from tests.speech import SENTENCES, spoken_wav

PATIENCE_S = 600.0


def run(drain_seconds: float, requests: int) -> dict[str, Any]:
    wav = spoken_wav(*(SENTENCES * 2), pause_seconds=1.0)
    answers: list[tuple[str, str | None]] = []

    with tempfile.TemporaryDirectory() as directory:
        log = Path(directory) / "server.log"
        with serving(Path(directory), log_path=log, drain_seconds=drain_seconds) as (process, base):

            def post() -> None:
                try:
                    response = httpx.post(
                        f"{base}/v1/audio/transcriptions",
                        files={"file": ("a.wav", wav)},
                        data={"model": "whisper-1", "response_format": "text"},
                        timeout=PATIENCE_S,
                    )
                    answers.append((str(response.status_code), response.headers.get("retry-after")))
                except httpx.HTTPError as exc:
                    answers.append((type(exc).__name__, None))

            threads = [threading.Thread(target=post) for _ in range(requests)]
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + PATIENCE_S
            while (
                metric(httpx.get(f"{base}/metrics").text, "voxserve_requests_in_flight") < requests
            ):
                assert time.monotonic() < deadline, "the requests never all arrived"
                time.sleep(0.05)
            time.sleep(1.0)  # a model batch is under way
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=PATIENCE_S)
            took = time.monotonic() - signalled
            for thread in threads:
                thread.join()
        records = [
            json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")
        ]
    return {
        "drain_seconds": drain_seconds,
        "in_flight": requests,
        "exit_code": code,
        "exit_after_sigterm_s": round(took, 2),
        "over_deadline_s": round(took - drain_seconds, 2),
        "answers": dict(Counter(status for status, _ in answers)),
        "retry_after_on_503": sorted({str(after) for status, after in answers if status == "503"}),
        "tracebacks_in_log": sum(1 for r in records if "exception" in r),
        "error_lines": [r["message"] for r in records if r["level"] == "error"],
        "ok": {
            "exit_0": code == 0,
            "within_deadline_plus_2_s": took <= drain_seconds + 2,
            "every_client_answered": all(status in ("200", "503") for status, _ in answers),
        },
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drain-seconds", type=float, default=5.0)
    parser.add_argument("--requests", type=int, default=8, help="transcriptions in flight")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    print(json.dumps(run(args.drain_seconds, args.requests)))


if __name__ == "__main__":
    main()
