"""Connection-layer attacks on a real server: oversized heads (issue 13, item 3) and a
slowloris under a 1024 open-file limit (item 4). Does ``/health`` keep answering, and
does memory stay flat?

Run from the repository root::

    python -m benchmarks.slowloris [--connections 1100] [--interval 5] [--seconds 45]
                                   [--open-files 1024] [--quick]

One JSON document goes to stdout; progress goes to stderr.

What is done
------------
A real ``python -m server serve`` process (:mod:`benchmarks.server_process`) with no
models (only the connection layer is under test), default connection settings, and its
``RLIMIT_NOFILE`` set to ``--open-files`` (soft and hard, so the server cannot raise it).

1. *heads*: one connection each sends a 64 MiB request target, one 64 MiB header, and
   128 MiB of small headers (``X-A: b``), as fast as the socket takes them. Reported: the
   status the server answered (or ``closed``), the seconds from the first byte to the
   answer or the close, and the server's RSS before and its peak during (sampled every
   20 ms).
2. *slowloris*: ``--connections`` connections each send one byte of an endless header
   every ``--interval`` seconds; a connection the server closes is opened again at once,
   as a real attacker would, for ``--seconds``. Meanwhile ``GET /health`` is probed on a
   fresh connection every 250 ms with a 5 s limit. Reported: probe latencies (p50, p99,
   max) and failures, before and during the attack; the attacker's connections (open at
   most, opened in all); and the server's ``voxserve_connections_closed_total`` by reason.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import resource
import socket
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from typing import Any

import httpx

from benchmarks.server_process import metric, rss_mb, serving
from server.connections import REASONS

PROBE_EVERY_S = 0.25
PROBE_TIMEOUT_S = 5.0


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# Item 3: oversized heads


class _RssPeak:
    """The peak RSS of a process, sampled in a thread every 20 ms."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss_mb(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mb(self.pid))

    def __enter__(self) -> _RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join()


def _oversized(port: int, head_start: bytes, filler: bytes, total: int) -> dict[str, Any]:
    """Send ``head_start`` then ``filler`` repeated to ``total`` bytes; the answer or close."""
    started = time.monotonic()
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        block = filler * max(1, (1 << 20) // len(filler))
        try:
            sock.sendall(head_start)
            while sent < total:
                sock.sendall(block)
                sent += len(block)
            sock.sendall(b"\r\n\r\n")
        except OSError:
            pass
        try:
            answer = sock.recv(64)
        except OSError:
            answer = b""
    seconds = time.monotonic() - started
    status = answer.split(b" ")[1].decode() if answer.startswith(b"HTTP/1.1 ") else "closed"
    return {"status": status, "seconds": round(seconds, 3), "mib_sent": round(sent / 2**20, 1)}


def heads(pid: int, base_url: str) -> dict[str, Any]:
    port = int(base_url.rsplit(":", 1)[1])
    cases = {
        "url_64mib": (b"GET /", b"a", 64 << 20),
        "one_header_64mib": (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ", b"a", 64 << 20),
        "small_headers_128mib": (b"GET /health HTTP/1.1\r\nHost: x\r\n", b"X-A: b\r\n", 128 << 20),
    }
    results: dict[str, Any] = {}
    for name, (start, filler, total) in cases.items():
        before = rss_mb(pid)
        with _RssPeak(pid) as peak:
            outcome = _oversized(port, start, filler, total)
            health = httpx.get(f"{base_url}/health", timeout=PROBE_TIMEOUT_S).status_code
        outcome.update(
            rss_before_mb=round(before, 1),
            rss_peak_growth_mb=round(peak.peak - before, 1),
            health_after=health,
        )
        results[name] = outcome
        _log(f"{name}: {outcome}")
    return results


# Item 4: slowloris


@dataclass
class _Attack:
    open_now: int = 0
    open_max: int = 0
    opened: int = 0
    connect_failures: int = 0
    closed_by_server: int = 0


@dataclass
class _Probes:
    latencies: list[float] = field(default_factory=list)
    failures: int = 0

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)

        def pick(q: float) -> float | None:
            return (
                round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)
                if ordered
                else None
            )

        return {
            "probes": len(self.latencies) + self.failures,
            "failures": self.failures,
            "p50_ms": pick(0.5),
            "p99_ms": pick(0.99),
            "max_ms": round(max(ordered) * 1000, 1) if ordered else None,
        }


async def _slow_connection(
    port: int, interval: float, stop: asyncio.Event, attack: _Attack
) -> None:
    """One attacker socket: a byte of an endless header every ``interval``; when the server
    closes it, a new one at the next tick (as the slowloris tool recreates its sockets)."""
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1_000_000
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            attack.connect_failures += 1
            await asyncio.sleep(interval)
            continue
        attack.opened += 1
        attack.open_now += 1
        attack.open_max = max(attack.open_max, attack.open_now)
        try:
            for offset in range(len(head)):
                writer.write(head[offset : offset + 1])
                await writer.drain()
                with suppress(TimeoutError):
                    if await asyncio.wait_for(reader.read(1024), interval) == b"":
                        break
                if stop.is_set():
                    break
        except OSError:
            pass
        finally:
            attack.open_now -= 1
            writer.close()
        if not stop.is_set():
            attack.closed_by_server += 1
            await asyncio.sleep(interval)


async def _attack(port: int, connections: int, interval: float, seconds: float) -> dict[str, Any]:
    stop = asyncio.Event()
    attack = _Attack()
    tasks = [
        asyncio.create_task(_slow_connection(port, interval, stop, attack))
        for _ in range(connections)
    ]
    await asyncio.sleep(seconds)
    open_at_end = attack.open_now
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "connections": connections,
        "byte_every_s": interval,
        "seconds": seconds,
        "open_max": attack.open_max,
        "open_at_end": open_at_end,
        "opened": attack.opened,
        "connect_failures": attack.connect_failures,
        "closed_by_server": attack.closed_by_server,
    }


def _attack_process(
    port: int, connections: int, interval: float, seconds: float, out: Queue[dict[str, Any]]
) -> None:
    """The attacker runs in its own process, so that its event loop, busy with a thousand
    sockets, does not delay the probes."""
    _raise_own_open_files(connections + 256)
    out.put(asyncio.run(_attack(port, connections, interval, seconds)))


def _probe(port: int) -> float | None:
    """Seconds for ``GET /health`` on a fresh connection; ``None`` for a failure."""
    started = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=PROBE_TIMEOUT_S) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = sock.recv(64)
    except OSError:
        return None
    return time.monotonic() - started if answer.startswith(b"HTTP/1.1 200") else None


def _probe_for(port: int, seconds: float) -> _Probes:
    probes = _Probes()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        latency = _probe(port)
        if latency is None:
            probes.failures += 1
        else:
            probes.latencies.append(latency)
        time.sleep(PROBE_EVERY_S)
    return probes


def slowloris(base_url: str, connections: int, interval: float, seconds: float) -> dict[str, Any]:
    port = int(base_url.rsplit(":", 1)[1])
    before = _probe_for(port, 3.0)
    context = multiprocessing.get_context("spawn")
    out: Queue[dict[str, Any]] = context.Queue()
    attacker = context.Process(
        target=_attack_process, args=(port, connections, interval, seconds, out)
    )
    _log(f"slowloris: {connections} connections, one byte every {interval:g} s, for {seconds:g} s")
    attacker.start()
    during = _probe_for(port, seconds)
    attack = out.get(timeout=seconds + 120)
    attacker.join()
    return {
        "health_before": before.summary(),
        "health_during": during.summary(),
        "attack": attack,
    }


def _raise_own_open_files(needed: int) -> None:
    """The attacker needs a descriptor per connection too."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(needed, soft)), hard))


def run(connections: int, interval: float, seconds: float, open_files: int) -> dict[str, Any]:
    _raise_own_open_files(connections + 256)
    with serving(open_files=open_files, models=[], speech_models=[]) as (process, base_url):
        result: dict[str, Any] = {"server_open_files": open_files}
        result["heads"] = heads(process.pid, base_url)
        result["slowloris"] = slowloris(base_url, connections, interval, seconds)
        exposition = httpx.get(f"{base_url}/metrics").text
        result["closed_by_server"] = {
            reason: metric(exposition, "voxserve_connections_closed_total", reason=reason)
            for reason in REASONS
        }
        result["rss_end_mb"] = round(rss_mb(process.pid), 1)
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1100)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between bytes")
    parser.add_argument("--seconds", type=float, default=45.0, help="length of the attack")
    parser.add_argument("--open-files", type=int, default=1024, help="the server's RLIMIT_NOFILE")
    parser.add_argument("--quick", action="store_true", help="200 connections for 20 s")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    connections, seconds = (200, 20.0) if args.quick else (args.connections, args.seconds)
    result = run(connections, args.interval, seconds, args.open_files)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
