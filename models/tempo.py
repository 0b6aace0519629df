"""Speech played faster or slower with its pitch kept: how a request's ``speed`` is made.

The voices' own pace inputs (Piper's ``length_scale``, hibari's and Kokoro's ``speed``)
do not keep what ``speed`` promises. On three ordinary sentences (``python -m
benchmarks.speech_speed --native``), the length over (length at 1.0) / speed was
1.11-1.22 at 2.0 and 1.75-1.86 at 4.0 (a token lasts at least a frame, however fast),
0.89 for Piper at 0.5 and 1.27 for hibari at 0.25, and already 1.06-1.09 at 1.25 and
0.90 for Piper at 0.8. A time-stretch (ffmpeg's ``atempo``, a WSOLA: overlap-add of
short windows, each placed where it best continues the last, so the pitch is kept)
is exact in length, and Whisper tiny.en read it back as well or better: no word of 22
lost at 0.5-2.0 on either embedded voice, 0-3 at 0.25 (the model's pace: 0-2 at
0.5-2.0, 3-5 at 0.25). So :func:`pace_and_tempo` leaves the model's own pace to the
voice's configured ``speed`` (a constant of the voice, kept within
:data:`NATIVE_PACE`), and the request's ``speed`` is all :func:`stretch`: length is
linear in ``speed``, and requests at different speeds share the voice's batches.

Above ~2.5 no stretch kept speech intelligible to tiny.en: 1-4 words of 22 lost at
2.5, 10 at 3.0, 19-21 at 4.0, whatever was tried (atempo chained or in one stage,
WSOLA with 8-40 ms windows, pauses shortened more than speech, the model's pace 1.5
or 2.0 before the stretch). The model's own pace read 2 words of 22 wrong at 4.0 only
because it was not 4 times as fast: it made 1.75-1.86x the promised length, about
what a stretch to 2.2 makes, which reads as well. ``speed`` is a length contract, so
the contract wins.

Runs in a worker thread; a call builds its own filter graph, so calls may run in
parallel. Cost, measured on a busy 2-core machine: 0.6-2 ms per second of output.
"""

from __future__ import annotations

import math
from fractions import Fraction

import av
import numpy as np

from models.base import AudioArray

NATIVE_PACE = (0.8, 1.25)
"""The range of a model's own pace input used at all (for a voice's configured speed):
within it both embedded voices were read back by tiny.en as well as at 1.0 and sound
like the voice; beyond it hibari lost words (2 of 22 at 2.0), and no model can go much
faster than a frame per token."""

STAGE_RANGE = (0.5, 2.0)
"""One ``atempo`` stage's range without skipping input: beyond it ffmpeg drops samples
instead of blending them, so larger factors are split into equal stages."""

TAIL_PAD_S = 0.1
"""Silence appended before stretching: ``atempo`` holds back up to a window (~40 ms of
input, four times that at 0.25) that it never emits, so the speech's last sound would
be cut; what comes out past the exact length is dropped."""

CHUNK_SAMPLES = 1 << 15
"""Samples pushed into the graph at a time, so its buffers stay small for long audio."""


def pace_and_tempo(speed: float, voice_speed: float = 1.0) -> tuple[float, float]:
    """The model's pace and the stretch that together make ``speed`` on a voice whose
    own configured speed is ``voice_speed``: ``pace * tempo == speed * voice_speed``,
    and the pace does not depend on ``speed``, so length stays linear in it."""
    low, high = NATIVE_PACE
    pace = min(high, max(low, voice_speed))
    return pace, speed * voice_speed / pace


def stages(tempo: float) -> list[float]:
    """``tempo`` as the fewest equal ``atempo`` stages that each stay in :data:`STAGE_RANGE`."""
    if tempo <= 0:
        raise ValueError(f"tempo must be positive, not {tempo}")
    count = max(1, math.ceil(abs(math.log2(tempo)) - 1e-9))
    return [tempo ** (1 / count)] * count


def stretched_length(samples: int, tempo: float) -> int:
    """How many samples :func:`stretch` returns for ``samples`` at ``tempo``."""
    return round(samples / tempo)


def stretch(audio: AudioArray, rate: int, tempo: float) -> AudioArray:
    """``audio`` (mono float32 at ``rate``) played ``tempo`` times as fast, pitch kept.

    Exactly :func:`stretched_length` samples long, so that a response's length is the
    sum of its sentences' and never drifts; ``tempo`` 1 returns ``audio`` itself.
    """
    if tempo == 1.0 or audio.size == 0:
        return audio
    length = stretched_length(audio.size, tempo)
    out = np.zeros(length, np.float32)
    graph = _graph(rate, stages(tempo))
    samples = audio.astype(np.float32, copy=False)
    chunks = [samples[i : i + CHUNK_SAMPLES] for i in range(0, samples.size, CHUNK_SAMPLES)]
    chunks.append(np.zeros(max(1, round(TAIL_PAD_S * rate)), np.float32))
    written, pts = 0, 0
    for chunk in chunks:
        graph.push(_frame(chunk, rate, pts))
        pts += chunk.size
        written = _drain(graph, out, written)
    graph.push(None)
    _drain(graph, out, written)
    return out


def _graph(rate: int, factors: list[float]) -> av.filter.Graph:
    graph = av.filter.Graph()
    source = graph.add_abuffer(
        format="flt", sample_rate=rate, layout="mono", time_base=Fraction(1, rate)
    )
    nodes = [source, *(graph.add("atempo", f"{factor:.6f}") for factor in factors)]
    graph.link_nodes(*nodes, graph.add("abuffersink"))
    graph.configure()
    return graph


def _frame(samples: AudioArray, rate: int, pts: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
    frame.sample_rate = rate
    frame.time_base = Fraction(1, rate)
    frame.pts = pts
    return frame


def _drain(graph: av.filter.Graph, out: AudioArray, written: int) -> int:
    """Copy what the graph has ready into ``out`` from ``written`` on, dropping what
    goes past its end; the new ``written``."""
    while True:
        try:
            frame = graph.pull()
        except (av.error.BlockingIOError, av.error.EOFError):
            return written
        assert isinstance(frame, av.AudioFrame)
        samples = frame.to_ndarray().reshape(-1)
        take = min(samples.size, out.size - written)
        out[written : written + take] = samples[:take]
        written += take
