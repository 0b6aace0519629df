"""A real ``python -m server serve`` process for benchmarks and operational tests.

:func:`serving` writes the given settings to a JSON config file, starts the server
from the repository root with that file (and no ``VOXSERVE_*`` variables from the
caller's environment, so the file is the whole configuration), waits for
``/ready`` and yields the process and its base URL. On the way out the process is
killed: what it was doing is of no interest any more.
"""

from __future__ import annotations

import json
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import IO, Any

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 600.0

DEFAULT_SETTINGS: dict[str, Any] = {"speech_models": [], "cpu_threads": 2, "log_format": "json"}
"""Transcription only, on two CPU threads, JSON logs; ``settings`` override any of these."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def serving(
    directory: Path | None = None,
    *,
    log_path: Path | None = None,
    env: Mapping[str, str] | None = None,
    open_files: int | None = None,
    **settings: Any,
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Run ``voxserve serve`` with ``settings`` until the block ends; yield it and its URL.

    The config file goes to ``directory`` (a temporary one when ``None``). A setting
    given as ``None`` is left out, so the server's default applies (``speech_models=None``:
    the embedded voices). The server's output goes to ``log_path`` when given, and
    otherwise to a pipe, which the caller may read once the process has exited; a
    pipe is only for short runs, since a full one stops the server at its next log line.
    ``env`` adds environment variables (``MALLOC_ARENA_MAX``, ...) to the caller's.
    ``open_files`` sets the server's ``RLIMIT_NOFILE`` (soft and hard), as a container's
    ``ulimit -n`` would.
    """
    with ExitStack() as stack:
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        port = free_port()
        config = directory / f"voxserve-{port}.json"
        values = {**DEFAULT_SETTINGS, "port": port, **settings}
        config.write_text(json.dumps({k: v for k, v in values.items() if v is not None}))
        output: IO[str] | int = subprocess.PIPE
        if log_path is not None:
            output = stack.enter_context(log_path.open("w"))
        environment = {k: v for k, v in os.environ.items() if not k.startswith("VOXSERVE_")}
        process = subprocess.Popen(
            [sys.executable, "-m", "server", "serve", "--config", str(config)],
            cwd=REPO_ROOT,
            env={**environment, **(env or {})},
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=None if open_files is None else partial(_limit_open_files, open_files),
        )
        base_url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(process, base_url, log_path)
            yield process, base_url
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()


def _limit_open_files(limit: int) -> None:
    """In the child, before ``exec``: at most ``limit`` open files, hard limit included."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


def _wait_ready(process: subprocess.Popen[str], base_url: str, log_path: Path | None) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if process.poll() is not None:
            if log_path is not None:
                output = log_path.read_text(errors="replace")
            else:
                output = process.stdout.read() if process.stdout else ""
            raise RuntimeError(f"voxserve serve exited with {process.returncode}:\n{output}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"voxserve serve was not ready within {READY_TIMEOUT_S:g} s")
        try:
            if httpx.get(f"{base_url}/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)


def rss_mb(pid: int) -> float:
    """The resident set size of process ``pid`` in MiB (``VmRSS`` of ``/proc/<pid>/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def metric(exposition: str, name: str, **labels: str) -> float:
    """The value of the Prometheus sample ``name`` with exactly ``labels`` (any order); 0 if
    absent."""
    for line in exposition.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if found == labels:
            return float(match.group(3))
    return 0.0
