"""Realtime transcription under load: how many live speakers one CPU box keeps up with.

Run from the repository root (so that ``tests.speech`` is importable)::

    python -m benchmarks.realtime_load [--sessions 1 2 4 8 12 16 20] [--seconds 30]
                                       [--batch-size 16] [--p95-target 1.5] [--quick]

One JSON document goes to stdout; progress goes to stderr.

What is measured
----------------
*Speech*: each session streams one long recording: ``tests.speech.SENTENCES`` spoken by
the packaged Piper voice (noise off, so the words are known exactly), in a shuffled
order of its own, with a pause of 0.8-1.2 s (drawn per pause) between sentences, until
``--seconds`` of audio; 0.3 s of silence before the first sentence and
``silence + 1 s`` after the last. Piper speaks at 22.05 kHz; each sentence is resampled
once to the API's 24 kHz pcm16 by PyAV's ``AudioResampler`` (libswresample, as the
server's decoder), its tail flushed. Where a sentence's speech ends is the end of its
last 10 ms frame louder than -40 dBFS (Piper leaves ~0.1 s of near-silence after it).

*Sessions*: ``openai.AsyncOpenAI(...).realtime.connect(extra_query={"intent":
"transcription"})``, ``session.update`` to pcm 24 kHz, ``whisper-1`` (language
``--language``) and ``server_vad`` (``--silence-ms``, default 500 as OpenAI's), then the
recording in ``--chunk-ms`` chunks at real-time pace: chunk k is sent at
``start + k * chunk`` on the monotonic clock (absolute, so a late chunk does not delay
the next ones). Session i starts at a random offset in the first 2 s so that sessions are
not in lockstep. Events are read with ``async for event in connection``. Appends go
out as the JSON text ``input_audio_buffer.append`` is, through the SDK connection's
``send_raw``: the SDK's typed ``append`` spends its own CPU transforming each event (it
is measured at warm-up, ``client.sdk_append_cpu_us``), and the client shares this box
with the server; ``--sdk-append`` uses it anyway.

*Latency*: the client knows where each sentence's speech ends in its own stream, so
``end of speech`` is the time it sent the chunk holding that sample.
``latency_s`` is the arrival of the utterance's ``...transcription.completed`` minus
that; ``after_silence_s`` subtracts the silence the VAD must hear before it can know
speech stopped (``silence_duration_ms``): the server's own delay. ``commit_s`` is
``committed`` to ``completed``: queue and inference.

*Matching*: utterances (items) and sentences are matched by where they lie in the
stream: an item spans ``[audio_start_ms, audio_end_ms]`` of its speech events, a
sentence its speech; items and sentences that overlap form one group, whose reference
is its sentences' text and hypothesis its items' transcripts in order. A sentence whose
group has no completed item is ``lost``; an item over no sentence with words in it is
``extra``; groups of 2+ sentences (one item for two) or 2+ items (one sentence cut in
two) are ``merged`` / ``split``. ``wer`` is over all groups (``tests.speech``).

*Configs and levels*: the server runs as a subprocess (``benchmarks.server_process``:
the embedded catalog, ``cpu_threads`` 2) twice: batching (``max_batch_size``
``--batch-size``) and ``max_batch_size=1``, the same ``max_queue_delay_ms``. For each N
of ``--sessions`` N sessions stream at once. A level is ``real_time`` when the p95 of
``latency_s`` (``--target-latency after_silence``: of ``after_silence_s``) is at most
``--p95-target`` and no sentence was lost; a config stops climbing at its first level
that is not (``--keep-climbing``: it runs them all). ``largest_real_time_sessions`` is
the largest N before that: a lower bound on a grid, the limit lies below the next N.

Per level also: ``mean_batch_size`` (``voxserve_batch_size`` on ``/metrics``), the
server's and the client's CPU seconds (``/proc/<pid>/stat`` and ``getrusage``), the
load average before the level, and ``send_lag_s``: how late the client sent its chunks
(a client that cannot keep pace makes the server look slower than it is).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import platform
import random
import resource
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

import av
import httpx
import numpy as np
import numpy.typing as npt
import openai
from openai.resources.realtime.realtime import AsyncRealtimeConnection
from openai.types.realtime import (
    ConversationItemInputAudioTranscriptionCompletedEvent,
    ConversationItemInputAudioTranscriptionDeltaEvent,
    ConversationItemInputAudioTranscriptionFailedEvent,
    InputAudioBufferCommittedEvent,
    InputAudioBufferSpeechStartedEvent,
    InputAudioBufferSpeechStoppedEvent,
    RealtimeErrorEvent,
    RealtimeServerEvent,
)

from benchmarks.server_process import metric, serving
from benchmarks.transcription_load import BatchHistogram, percentile, rounded
from models.hardware import available_cpus
from tests.speech import SENTENCES, speak, word_error_rate, words

RATE = 24_000
MODEL = "whisper-1"
LEAD_SECONDS = 0.3
PAUSE_RANGE_S = (0.8, 1.2)
START_SPREAD_S = 2.0
LOUD_DBFS = -40.0
FRAME_S = 0.010
CONNECT_TIMEOUT_S = 60.0
TAIL_AFTER_SILENCE_S = 1.0
APPEND_PROBE_CHUNKS = 100
LATENCY_METRIC = "voxserve_realtime_latency_seconds"

JSON = dict[str, Any]
Samples = npt.NDArray[np.int16]


def log(message: str) -> None:
    print(f"[realtime_load] {message}", file=sys.stderr, flush=True)


# -- speech ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sentence:
    text: str
    start: int
    """First sample of speech in the stream (24 kHz)."""
    end: int
    """One past the last sample of speech in the stream (24 kHz)."""

    def span_ms(self) -> tuple[float, float]:
        return self.start * 1000 / RATE, self.end * 1000 / RATE


@dataclass(frozen=True)
class Recording:
    """One session's audio and where each sentence is spoken in it."""

    samples: Samples
    sentences: tuple[Sentence, ...]
    offset_s: float
    """When the session starts streaming, after the level's common start."""

    @property
    def seconds(self) -> float:
        return len(self.samples) / RATE


def resample(samples: Samples, rate: int, to_rate: int = RATE) -> Samples:
    """``samples`` at ``to_rate`` by libswresample (PyAV), the tail flushed."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=to_rate)
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = rate
    out = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    out += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(out).astype(np.int16)


def speech_span(samples: Samples, rate: int = RATE) -> tuple[int, int]:
    """``[start, end)`` of the 10 ms frames louder than ``LOUD_DBFS``: Piper pads its
    clips with near-silence, which is not speech the VAD could hear end."""
    width = round(FRAME_S * rate)
    frames = len(samples) // width
    power = (samples[: frames * width].astype(np.float64).reshape(frames, width) ** 2).mean(1)
    loud = np.flatnonzero(np.sqrt(power) > 32768 * 10 ** (LOUD_DBFS / 20))
    if not len(loud):
        return 0, len(samples)
    return int(loud[0]) * width, min(len(samples), (int(loud[-1]) + 1) * width)


@cache
def sentence_audio(text: str) -> tuple[Samples, int, int]:
    """``text`` spoken at 24 kHz, and ``[start, end)`` of its speech (cached)."""
    samples, rate = speak(text)
    at_24k = resample(samples, rate)
    start, end = speech_span(at_24k)
    return at_24k, start, end


def build_recording(seconds: float, rng: random.Random, silence_s: float) -> Recording:
    """Sentences in a shuffled order with drawn pauses until ``seconds`` of audio."""
    parts: list[Samples] = [np.zeros(round(LEAD_SECONDS * RATE), np.int16)]
    position = len(parts[0])
    sentences: list[Sentence] = []
    order: list[str] = []
    while not sentences or position < seconds * RATE:
        if not order:
            order = rng.sample(SENTENCES, len(SENTENCES))
        text = order.pop()
        if sentences:
            pause = np.zeros(round(rng.uniform(*PAUSE_RANGE_S) * RATE), np.int16)
            parts.append(pause)
            position += len(pause)
        audio, start, end = sentence_audio(text)
        parts.append(audio)
        sentences.append(Sentence(text, position + start, position + end))
        position += len(audio)
    parts.append(np.zeros(round((silence_s + TAIL_AFTER_SILENCE_S) * RATE), np.int16))
    return Recording(np.concatenate(parts), tuple(sentences), rng.uniform(0, START_SPREAD_S))


def level_recordings(sessions: int, seconds: float, seed: int, silence_s: float) -> list[Recording]:
    """The same recordings for a level whichever server config hears them."""
    return [
        build_recording(seconds, random.Random(f"{seed}:{sessions}:{i}"), silence_s)
        for i in range(sessions)
    ]


def chunk_audio(samples: Samples, chunk_samples: int) -> list[str]:
    """Base64 of each chunk, encoded before the clock starts."""
    data = samples.astype("<i2").tobytes()
    step = 2 * chunk_samples
    return [base64.b64encode(data[i : i + step]).decode() for i in range(0, len(data), step)]


def append_message(audio_b64: str) -> str:
    """The JSON text the SDK's ``input_audio_buffer.append(audio=...)`` sends."""
    return json.dumps({"type": "input_audio_buffer.append", "audio": audio_b64})


# -- one session -------------------------------------------------------------------------


@dataclass
class Item:
    """One utterance the server committed, as the client saw its events."""

    item_id: str
    start_ms: float | None = None
    end_ms: float | None = None
    committed_at: float | None = None
    first_delta_at: float | None = None
    completed_at: float | None = None
    transcript: str = ""
    failure: str | None = None

    @property
    def answered(self) -> bool:
        return self.completed_at is not None or self.failure is not None


@dataclass(frozen=True)
class ClientConfig:
    chunk_ms: int
    silence_ms: int
    language: str | None
    sdk_append: bool
    drain_timeout_s: float

    @property
    def chunk_samples(self) -> int:
        return RATE * self.chunk_ms // 1000

    def session(self) -> dict[str, Any]:
        """The ``session.update`` payload: pcm 24 kHz, whisper-1, server VAD."""
        transcription: dict[str, Any] = {"model": MODEL}
        if self.language:
            transcription["language"] = self.language
        return {
            "type": "transcription",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": RATE},
                    "transcription": transcription,
                    "turn_detection": {
                        "type": "server_vad",
                        "threshold": 0.5,
                        "prefix_padding_ms": 300,
                        "silence_duration_ms": self.silence_ms,
                    },
                }
            },
        }


class SessionRefused(RuntimeError):
    """The server did not open or configure a session the way the protocol says."""


@dataclass
class SessionLog:
    """What one session sent and heard."""

    recording: Recording
    sent_at: list[float] = field(default_factory=list)
    lag_s: list[float] = field(default_factory=list)
    items: dict[str, Item] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    speaking: bool = False
    done_sending: bool = False
    closed_by_server: bool = False
    timed_out: bool = False

    def item(self, item_id: str) -> Item:
        if item_id not in self.items:
            self.items[item_id] = Item(item_id)
        return self.items[item_id]

    def settled(self) -> bool:
        """Sent everything, no speech open, every committed item answered."""
        return (
            self.done_sending
            and not self.speaking
            and all(self.items[i].answered for i in self.order)
        )

    def on_event(self, event: RealtimeServerEvent, at: float) -> None:
        self.events.append(event.type)
        if isinstance(event, InputAudioBufferSpeechStartedEvent):
            self.item(event.item_id).start_ms = event.audio_start_ms
            self.speaking = True
        elif isinstance(event, InputAudioBufferSpeechStoppedEvent):
            self.item(event.item_id).end_ms = event.audio_end_ms
            self.speaking = False
        elif isinstance(event, InputAudioBufferCommittedEvent):
            self.item(event.item_id).committed_at = at
            self.order.append(event.item_id)
        elif isinstance(event, ConversationItemInputAudioTranscriptionDeltaEvent):
            item = self.item(event.item_id)
            item.first_delta_at = item.first_delta_at or at
        elif isinstance(event, ConversationItemInputAudioTranscriptionCompletedEvent):
            item = self.item(event.item_id)
            item.completed_at, item.transcript = at, event.transcript
        elif isinstance(event, ConversationItemInputAudioTranscriptionFailedEvent):
            self.item(event.item_id).failure = event.error.code or "failed"
        elif isinstance(event, RealtimeErrorEvent):
            self.errors.append(f"{event.error.code}: {event.error.message}")


class Session:
    """One live speaker: opens a session, streams its recording at real-time pace."""

    def __init__(self, recording: Recording, config: ClientConfig) -> None:
        self.log = SessionLog(recording)
        self.config = config
        self.chunks = chunk_audio(recording.samples, config.chunk_samples)
        self.messages = [append_message(chunk) for chunk in self.chunks]
        self.connection: AsyncRealtimeConnection | None = None
        self.changed = asyncio.Event()
        self.reader: asyncio.Task[None] | None = None

    async def open(self, client: openai.AsyncOpenAI, stack: AsyncExitStack) -> None:
        manager = client.realtime.connect(extra_query={"intent": "transcription"})
        self.connection = connection = await stack.enter_async_context(manager)
        created = await asyncio.wait_for(connection.recv(), CONNECT_TIMEOUT_S)
        if created.type != "session.created":
            raise SessionRefused(f"first event {created.type}, not session.created: {created}")
        await connection.session.update(session=self.config.session())  # type: ignore[arg-type]
        updated = await asyncio.wait_for(connection.recv(), CONNECT_TIMEOUT_S)
        if updated.type != "session.updated":
            raise SessionRefused(f"session.update answered {updated}")
        self.reader = asyncio.create_task(self._read(connection))

    async def _read(self, connection: AsyncRealtimeConnection) -> None:
        try:
            async for event in connection:
                self.log.on_event(event, time.perf_counter())
                self.changed.set()
        except Exception as exc:  # a broken connection is a result, not a crash
            self.log.errors.append(f"connection: {type(exc).__name__}: {exc}")
        self.log.closed_by_server = not self.log.settled()
        self.changed.set()

    async def send(self, connection: AsyncRealtimeConnection, k: int) -> None:
        if self.config.sdk_append:
            await connection.input_audio_buffer.append(audio=self.chunks[k])
        else:
            await connection.send_raw(self.messages[k])

    async def stream(self, level_start: float) -> SessionLog:
        """Send every chunk on time, then wait until every utterance is answered."""
        assert self.connection is not None
        chunk_s = self.config.chunk_ms / 1000
        start = level_start + self.log.recording.offset_s
        for k in range(len(self.chunks)):
            due = start + k * chunk_s
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            self.log.lag_s.append(max(0.0, time.perf_counter() - due))
            if self.log.closed_by_server:
                break
            await self.send(self.connection, k)
            self.log.sent_at.append(time.perf_counter())
        self.log.done_sending = True
        deadline = time.perf_counter() + self.config.drain_timeout_s
        while not self.log.settled() and not self.log.closed_by_server:
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), deadline - time.perf_counter())
            except TimeoutError:
                self.log.timed_out = True
                break
        return self.log

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()
        if self.reader is not None:
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)


async def run_sessions(
    base_url: str, recordings: Sequence[Recording], config: ClientConfig
) -> list[SessionLog]:
    """Open every session, then stream all of them from one common start."""
    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="bench", max_retries=0)
    sessions = [Session(r, config) for r in recordings]
    async with AsyncExitStack() as stack:
        await asyncio.gather(*(s.open(client, stack) for s in sessions))
        level_start = time.perf_counter() + 0.5
        logs = await asyncio.gather(*(s.stream(level_start) for s in sessions))
        await asyncio.gather(*(s.close() for s in sessions))
    return list(logs)


async def probe_append_cost(base_url: str, config: ClientConfig) -> JSON:
    """Client CPU per append: the SDK's typed ``append`` against ``send_raw`` of the same
    JSON text, ``APPEND_PROBE_CHUNKS`` chunks of silence each, on one open session."""
    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="bench", max_retries=0)
    silence = chunk_audio(np.zeros(config.chunk_samples, np.int16), config.chunk_samples)[0]
    message = append_message(silence)
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as connection:
        await connection.recv()
        started = time.process_time()
        for _ in range(APPEND_PROBE_CHUNKS):
            await connection.input_audio_buffer.append(audio=silence)
        sdk = time.process_time() - started
        started = time.process_time()
        for _ in range(APPEND_PROBE_CHUNKS):
            await connection.send_raw(message)
        raw = time.process_time() - started
    return {
        "sdk_append_cpu_us": round(sdk / APPEND_PROBE_CHUNKS * 1e6, 1),
        "send_raw_cpu_us": round(raw / APPEND_PROBE_CHUNKS * 1e6, 1),
    }


# -- scoring -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Utterance:
    """One group of overlapping sentences and items, scored."""

    reference: str
    hypothesis: str
    sentences: int
    items: int
    lost: bool
    latency_s: float | None
    after_silence_s: float | None
    commit_s: float | None


def group(
    sentences: Sequence[tuple[float, float]], items: Sequence[tuple[float, float]]
) -> list[tuple[list[int], list[int]]]:
    """Connected groups of sentences and items whose spans overlap, in stream order."""
    parent = list(range(len(sentences) + len(items)))

    def root(n: int) -> int:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for s, (s_start, s_end) in enumerate(sentences):
        for i, (i_start, i_end) in enumerate(items):
            if min(s_end, i_end) > max(s_start, i_start):
                parent[root(len(sentences) + i)] = root(s)
    found: dict[int, tuple[list[int], list[int]]] = {}
    for n in range(len(parent)):
        members = found.setdefault(root(n), ([], []))
        if n < len(sentences):
            members[0].append(n)
        else:
            members[1].append(n - len(sentences))
    return sorted(
        found.values(),
        key=lambda g: sentences[g[0][0]][0] if g[0] else items[g[1][0]][0],
    )


def score_session(session: SessionLog, chunk_samples: int, silence_s: float) -> list[Utterance]:
    """Match the session's items to its sentences by position; one ``Utterance`` a group.

    An item with no position (committed without speech events) spans nothing and so
    stands alone."""
    sentences = session.recording.sentences
    items = [session.items[i] for i in session.order]
    items += [it for it in session.items.values() if it.item_id not in session.order]
    spans = [
        (it.start_ms, it.end_ms if it.end_ms is not None else math.inf)
        if it.start_ms is not None
        else (math.inf, math.inf)
        for it in items
    ]
    utterances = []
    for s_idx, i_idx in group([s.span_ms() for s in sentences], spans):
        members = [items[i] for i in i_idx]
        done = [it for it in members if it.completed_at is not None]
        lost = bool(s_idx) and (not members or len(done) < len(members))
        latency = after = commit = None
        if s_idx and members and not lost:
            chunk = (sentences[s_idx[-1]].end - 1) // chunk_samples
            completed = max(it.completed_at for it in done if it.completed_at is not None)
            if chunk < len(session.sent_at):
                latency = completed - session.sent_at[chunk]
                after = latency - silence_s
            last = max(done, key=lambda it: it.completed_at or 0.0)
            if last.committed_at is not None:
                commit = completed - last.committed_at
        utterances.append(
            Utterance(
                reference=" ".join(sentences[s].text for s in s_idx),
                hypothesis=" ".join(it.transcript for it in done if it.transcript),
                sentences=len(s_idx),
                items=len(members),
                lost=lost,
                latency_s=latency,
                after_silence_s=after,
                commit_s=commit,
            )
        )
    return utterances


def spread(values: Sequence[float]) -> JSON:
    return {
        "p50": rounded(percentile(values, 50), 3),
        "p95": rounded(percentile(values, 95), 3),
        "max": rounded(max(values), 3) if values else None,
    }


def summarize_level(
    sessions: Sequence[SessionLog],
    config: ClientConfig,
    p95_target: float,
    target_latency: Literal["speech_end", "after_silence"],
) -> JSON:
    """Latency, losses and WER of one level, and whether it stayed real-time."""
    silence_s = config.silence_ms / 1000
    utterances = [u for s in sessions for u in score_session(s, config.chunk_samples, silence_s)]
    latency = [u.latency_s for u in utterances if u.latency_s is not None]
    after = [u.after_silence_s for u in utterances if u.after_silence_s is not None]
    commit = [u.commit_s for u in utterances if u.commit_s is not None]
    failures: dict[str, int] = {}
    for s in sessions:
        for item in s.items.values():
            if item.failure:
                failures[item.failure] = failures.get(item.failure, 0) + 1
    lost = sum(u.sentences for u in utterances if u.lost)
    extra = sum(1 for u in utterances if not u.sentences and words(u.hypothesis))
    lags = [lag for s in sessions for lag in s.lag_s]
    pairs = [(u.reference, u.hypothesis) for u in utterances]
    judged = spread(after if target_latency == "after_silence" else latency)["p95"]
    reasons = []
    if judged is None or judged > p95_target:
        reasons.append(f"p95 {judged} s > {p95_target} s")
    if lost:
        reasons.append(f"{lost} sentences lost")
    return {
        "sessions": len(sessions),
        "sentences": sum(len(s.recording.sentences) for s in sessions),
        "items": sum(len(s.items) for s in sessions),
        "completed": sum(1 for s in sessions for it in s.items.values() if it.completed_at),
        "lost_sentences": lost,
        "extra_utterances": extra,
        "merged": sum(1 for u in utterances if u.sentences > 1),
        "split": sum(1 for u in utterances if u.sentences == 1 and u.items > 1),
        "failures": failures,
        "errors": sorted({e for s in sessions for e in s.errors})[:5],
        "timed_out_sessions": sum(s.timed_out for s in sessions),
        "closed_by_server": sum(s.closed_by_server for s in sessions),
        "latency_s": spread(latency),
        "after_silence_s": spread(after),
        "commit_s": spread(commit),
        "wer": rounded(word_error_rate(pairs)),
        "mismatches": [{"reference": r, "text": h} for r, h in pairs if words(r) != words(h)][:3],
        "send_lag_s": {
            "p95": rounded(percentile(lags, 95), 4),
            "max": rounded(max(lags), 4) if lags else None,
        },
        "real_time": not reasons,
        "not_real_time_because": reasons,
    }


# -- the server --------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerConfig:
    name: str
    max_batch_size: int
    max_queue_delay_ms: float
    cpu_threads: int

    def settings(self) -> dict[str, Any]:
        """The embedded catalog (whisper-1), transcription only, quiet logs."""
        return {
            "max_batch_size": self.max_batch_size,
            "max_queue_delay_ms": self.max_queue_delay_ms,
            "cpu_threads": self.cpu_threads,
            "device": "cpu",
            "log_level": "warning",
        }


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def client_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def histogram_mean(exposition: str, name: str) -> tuple[float, float]:
    """``(sum, count)`` of histogram ``name`` for ``whisper-1``."""
    return (
        metric(exposition, f"{name}_sum", model=MODEL),
        metric(exposition, f"{name}_count", model=MODEL),
    )


def server_figures(before: str, after: str) -> JSON:
    """What the server's ``/metrics`` say about a level: batches, inference, latency."""
    batches = BatchHistogram.parse(after).minus(BatchHistogram.parse(before))
    figures: JSON = {
        "mean_batch_size": rounded(batches.mean(), 3),
        "batches": round(batches.count),
        "batch_size_histogram": batches.per_bucket(),
    }
    for key, name in (
        ("mean_inference_s", "voxserve_inference_seconds"),
        ("mean_queue_wait_s", "voxserve_queue_wait_seconds"),
        ("mean_realtime_latency_s", LATENCY_METRIC),
    ):
        (sum_after, n_after), (sum_before, n_before) = (
            histogram_mean(after, name),
            histogram_mean(before, name),
        )
        n = n_after - n_before
        figures[key] = rounded((sum_after - sum_before) / n, 4) if n else None
    return figures


def run_level(
    base_url: str, pid: int, recordings: Sequence[Recording], config: ClientConfig
) -> tuple[list[SessionLog], JSON]:
    with httpx.Client(timeout=30.0) as http:
        before = http.get(f"{base_url}/metrics").text
        load = os.getloadavg()
        server_cpu, client_cpu, wall = process_cpu_s(pid), client_cpu_s(), time.perf_counter()
        logs = asyncio.run(run_sessions(base_url, recordings, config))
        wall = time.perf_counter() - wall
        server_cpu, client_cpu = process_cpu_s(pid) - server_cpu, client_cpu_s() - client_cpu
        after = http.get(f"{base_url}/metrics").text
    cores = available_cpus()
    figures = {
        "wall_s": round(wall, 2),
        "load_average_before": [round(x, 2) for x in load],
        "server_cpu_s": round(server_cpu, 2),
        "client_cpu_s": round(client_cpu, 2),
        "cpu_busy_share": round((server_cpu + client_cpu) / (wall * cores), 3),
        **server_figures(before, after),
    }
    return logs, figures


def run_config(
    server: ServerConfig,
    args: argparse.Namespace,
    config: ClientConfig,
    directory: Path,
) -> JSON:
    """Warm up, then climb the levels until one is not real-time."""
    report: JSON = {"max_batch_size": server.max_batch_size, "levels": {}}
    log_path = directory / f"server-{server.max_batch_size}.log"
    with serving(directory, log_path=log_path, **server.settings()) as (process, base_url):
        log(f"{server.name}: server ready on {base_url} (log: {log_path})")
        report["client"] = asyncio.run(probe_append_cost(base_url, config))
        warm = level_recordings(1, 4.0, args.seed + 1, config.silence_ms / 1000)
        warm_logs, _ = run_level(base_url, process.pid, warm, config)
        warm_level = summarize_level(warm_logs, config, args.p95_target, args.target_latency)
        report["warmup"] = {k: warm_level[k] for k in ("sentences", "completed", "wer")}
        if not warm_level["completed"]:
            events = warm_logs[0].events
            raise RuntimeError(f"warm-up session got no transcript; events: {events}")
        for n in args.sessions:
            recordings = level_recordings(n, args.seconds, args.seed, config.silence_ms / 1000)
            log(f"{server.name}: {n} sessions x {recordings[0].seconds:.0f} s")
            logs, figures = run_level(base_url, process.pid, recordings, config)
            level = {
                **summarize_level(logs, config, args.p95_target, args.target_latency),
                **figures,
            }
            report["levels"][str(n)] = level
            log(
                f"{server.name} N={n}: p50 {level['latency_s']['p50']} s, "
                f"p95 {level['latency_s']['p95']} s, lost {level['lost_sentences']}, "
                f"wer {level['wer']}, mean batch {level['mean_batch_size']}, "
                f"real-time {level['real_time']}"
            )
            if not level["real_time"] and not args.keep_climbing:
                break
    report["largest_real_time_sessions"] = largest_real_time(report["levels"])
    report["server_log"] = {"path": str(log_path), **log_problems(log_path)}
    return report


def log_problems(path: Path) -> JSON:
    """Tracebacks and error lines in the server's JSON log: there should be none."""
    records = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return {
        "tracebacks": sum(1 for r in records if "exception" in r),
        "error_lines": [r.get("message") for r in records if r.get("level") == "error"][:5],
    }


def largest_real_time(levels: dict[str, JSON]) -> int:
    """The largest N of the climb before its first level that is not real-time."""
    largest = 0
    for n in sorted(levels, key=int):
        if not levels[n]["real_time"]:
            break
        largest = int(n)
    return largest


def summarize(configs: dict[str, JSON], args: argparse.Namespace) -> JSON:
    batching = configs.get("batching", {}).get("largest_real_time_sessions")
    unbatched = configs.get("max_batch_size=1", {}).get("largest_real_time_sessions")
    ratio = batching / unbatched if batching is not None and unbatched else None
    sessions_ok = None if batching is None else batching >= args.target_sessions
    # No ratio when batching off never kept up, even with one session: nothing to divide by.
    ratio_ok = None if ratio is None else ratio >= args.target_ratio
    return {
        "largest_real_time_sessions": {"batching": batching, "max_batch_size=1": unbatched},
        "ratio": rounded(ratio, 3),
        "targets": {
            "sessions_batching": {
                "target": f">= {args.target_sessions}",
                "value": batching,
                "pass": sessions_ok,
            },
            "ratio_vs_unbatched": {
                "target": f">= {args.target_ratio}",
                "value": rounded(ratio, 3),
                "pass": ratio_ok,
            },
        },
        "target_met": bool(sessions_ok and ratio_ok),
        "note": (
            f"real-time: p95 of {args.target_latency} latency <= {args.p95_target} s and no "
            "sentence lost; N is a grid, so a largest N is a lower bound (the limit lies "
            "below the next level tried)"
        ),
    }


# -- command line ------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.realtime_load",
        description="Concurrent realtime transcription sessions, batched vs not.",
    )
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4, 8, 12, 16, 20])
    parser.add_argument("--seconds", type=float, default=30.0, help="audio per session")
    parser.add_argument("--chunk-ms", type=int, default=40)
    parser.add_argument("--silence-ms", type=int, default=500, help="server_vad silence")
    parser.add_argument("--language", default="en", help="'' for none (language detection)")
    parser.add_argument("--batch-size", type=int, default=16, help="max_batch_size, batching")
    parser.add_argument("--max-queue-delay-ms", type=float, default=5.0)
    parser.add_argument("--cpu-threads", type=int, default=2)
    parser.add_argument("--p95-target", type=float, default=1.5)
    parser.add_argument(
        "--target-latency", choices=("speech_end", "after_silence"), default="speech_end"
    )
    parser.add_argument("--target-sessions", type=int, default=8)
    parser.add_argument("--target-ratio", type=float, default=1.5)
    parser.add_argument(
        "--configs", nargs="+", choices=("batching", "unbatched"), default=["batching", "unbatched"]
    )
    parser.add_argument("--sdk-append", action="store_true", help="typed SDK append calls")
    parser.add_argument("--drain-timeout", type=float, default=60.0, help="wait for answers")
    parser.add_argument(
        "--keep-climbing", action="store_true", help="run every level, real-time or not"
    )
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--quick", action="store_true", help="smoke run: N 1 and 4, 8 s")
    args = parser.parse_args(argv)
    if args.quick:
        args.sessions, args.seconds = [1, 4], 8.0
    args.sessions = sorted(set(args.sessions))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    config = ClientConfig(
        chunk_ms=args.chunk_ms,
        silence_ms=args.silence_ms,
        language=args.language or None,
        sdk_append=args.sdk_append,
        drain_timeout_s=args.drain_timeout,
    )
    servers = {
        "batching": ServerConfig(
            "batching", args.batch_size, args.max_queue_delay_ms, args.cpu_threads
        ),
        "unbatched": ServerConfig("max_batch_size=1", 1, args.max_queue_delay_ms, args.cpu_threads),
    }
    configs: JSON = {}
    directory = Path(tempfile.mkdtemp(prefix="realtime-load-"))  # kept: the servers' logs
    for key in args.configs:
        server = servers[key]
        configs[server.name] = run_config(server, args, config, directory)
    result = {
        "benchmark": "realtime_load",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "model": f"{MODEL} (embedded catalog: tiny.en for English, base for the rest)",
        "settings": settings_report(args, config),
        "configs": configs,
        "summary": summarize(configs, args),
        "run_seconds": round(time.perf_counter() - started, 1),
    }
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


def machine() -> JSON:
    return {
        "cpu_count": os.cpu_count(),
        "available_cpus": available_cpus(),
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "openai": version("openai"),
        "websockets": version("websockets"),
        "ctranslate2": version("ctranslate2"),
    }


def cpu_model() -> str | None:
    try:
        lines: Iterable[str] = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), None)


def settings_report(args: argparse.Namespace, config: ClientConfig) -> JSON:
    return {
        "sessions": args.sessions,
        "seconds_per_session": args.seconds,
        "chunk_ms": config.chunk_ms,
        "audio_format": f"pcm16 {RATE} Hz (Piper 22.05 kHz resampled by PyAV/libswresample)",
        "pause_s": list(PAUSE_RANGE_S),
        "start_spread_s": START_SPREAD_S,
        "turn_detection": {
            "type": "server_vad",
            "threshold": 0.5,
            "prefix_padding_ms": 300,
            "silence_duration_ms": config.silence_ms,
        },
        "language": config.language,
        "append": "sdk input_audio_buffer.append" if config.sdk_append else "sdk send_raw",
        "batching_max_batch_size": args.batch_size,
        "max_queue_delay_ms": args.max_queue_delay_ms,
        "cpu_threads": args.cpu_threads,
        "p95_target_s": args.p95_target,
        "target_latency": args.target_latency,
        "seed": args.seed,
        "keep_climbing": args.keep_climbing,
    }


if __name__ == "__main__":
    sys.exit(main())
