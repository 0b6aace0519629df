"""The silence gate of short uploads: the VAD runs only when the model's first pass is in
doubt, and silence or noise still comes back as no text.

The outcome of each deferred gate is counted on ``/metrics``
(``voxserve_transcription_speech_checks_total``), which is how these tests see
whether the VAD was asked at all.
"""

from __future__ import annotations

import re

import numpy as np
import openai

from tests.conftest import LiveServer
from tests.speech import SENTENCES, spoken_wav, timed_speech, wav_bytes, words

OUTCOMES = ("trusted", "speech", "no_speech")


def _checks(live: LiveServer) -> dict[str, float]:
    with live.http() as http:
        text = http.get("/metrics").text
    counts = dict.fromkeys(OUTCOMES, 0.0)
    for outcome in OUTCOMES:
        match = re.search(
            r"^voxserve_transcription_speech_checks_total"
            rf'\{{model="whisper-1",outcome="{outcome}"\}} (\S+)$',
            text,
            re.M,
        )
        if match:
            counts[outcome] = float(match.group(1))
    return counts


def _delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in OUTCOMES}


def test_clear_speech_is_trusted_without_the_vad(
    stt_server: LiveServer, stt_client: openai.OpenAI
) -> None:
    before = _checks(stt_server)
    result = stt_client.audio.transcriptions.create(
        model="whisper-1", file=("s.wav", spoken_wav(SENTENCES[0], SENTENCES[3]))
    )
    assert words(result.text) == words(f"{SENTENCES[0]} {SENTENCES[3]}")
    assert _delta(before, _checks(stt_server)) == {"trusted": 1, "speech": 0, "no_speech": 0}


def test_noise_the_model_doubts_is_sent_to_the_vad_and_comes_back_empty(
    stt_server: LiveServer, stt_client: openai.OpenAI
) -> None:
    noise = np.random.default_rng(11).normal(0, 3000, 16_000 * 12).astype(np.int16)
    before = _checks(stt_server)
    result = stt_client.audio.transcriptions.create(
        model="whisper-1", file=("n.wav", wav_bytes(noise, 16_000)), response_format="verbose_json"
    )
    assert result.text == "" and result.segments == []
    delta = _delta(before, _checks(stt_server))
    # tiny.en loops on this noise (". . . .") or calls it silence itself; either way the
    # VAD is not trusted over, and nothing is said.
    assert delta["speech"] == 0
    assert delta["trusted"] + delta["no_speech"] == 1


def test_a_pure_tone_is_not_transcribed(stt_server: LiveServer, stt_client: openai.OpenAI) -> None:
    """tiny.en hears "I'm going to take a look at..." in a 440 Hz tone (a loop, a no-speech
    probability of 0.4): the VAD, asked because of that doubt, says no speech."""
    t = np.arange(16_000 * 10) / 16_000
    tone = (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    before = _checks(stt_server)
    result = stt_client.audio.transcriptions.create(
        model="whisper-1", file=("t.wav", wav_bytes(tone, 16_000))
    )
    assert result.text == ""
    assert _delta(before, _checks(stt_server))["no_speech"] == 1


def test_digital_silence_and_long_files_never_reach_the_deferred_gate(
    stt_server: LiveServer, stt_client: openai.OpenAI, long_wav: tuple[bytes, str]
) -> None:
    before = _checks(stt_server)
    silence = stt_client.audio.transcriptions.create(
        model="whisper-1", file=("z.wav", wav_bytes(np.zeros(16_000 * 5, np.int16), 16_000))
    )
    assert silence.text == ""  # the loudness scan alone: no model pass, no VAD
    audio, _ = timed_speech(SENTENCES[1], SENTENCES[2], pause_seconds=1.0)
    chunked = stt_client.audio.transcriptions.create(
        model="whisper-1", file=("c.wav", audio), chunking_strategy="auto"
    )
    assert words(chunked.text) == words(f"{SENTENCES[1]} {SENTENCES[2]}")
    long = stt_client.audio.transcriptions.create(model="whisper-1", file=("l.wav", long_wav[0]))
    assert long.text
    # chunking and files longer than a window are planned by the VAD up front, as before
    assert _delta(before, _checks(stt_server)) == {"trusted": 0, "speech": 0, "no_speech": 0}
