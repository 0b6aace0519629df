"""From text to a stream of audio: split, queue sentence by sentence, yield in order.

A request's text is normalized and split into sentences (``server.text``). Each
sentence is one scheduler item, so sentences of concurrent requests that share a
voice meet in one batch. The first sentence goes alone, so that the first audio
is not held back by a batch of its own followers; after it, a request keeps at
most ``LOOKAHEAD`` sentences queued: enough to fill batches and to have the next
sentence ready when the previous one is sent, without one long input flooding the
queue in front of everyone else. Audio is yielded sentence by sentence as soon as
it is ready and in order; when the consumer stops (the client went away), the
queued sentences are withdrawn and never computed.

``speed`` is made in two parts (:func:`models.tempo.pace_and_tempo`): the model speaks
at the voice's own pace, the same for every request, and each sentence is then
time-stretched, pitch kept, to the request's speed (:func:`models.tempo.stretch`, in a
worker thread, while the model works on the next sentences). The model's own pace
control is not linear (Piper made 1.8x the promised length at 4.0) and lost words
at 2.0; the stretch makes every sentence, with the pauses around it, exactly
(length at 1.0) / speed. A request's sentences at any speed share batches with
other requests on the voice.

A sentence that gives no audio (text the voice cannot read: hibari's English G2P
drops Japanese script entirely) is skipped; when no sentence of the input gives any,
the request is refused with a 400 on ``input`` before anything is sent, rather than
a 200 with an empty file. No other voice stands in: the client named this one, and
the other embedded voice (Piper, espeak-ng English) reads Japanese text as "Japanese
letter, Japanese letter", which is not reading it either.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from models.base import AudioArray, Speaker, SpeechItem, TextToSpeechBackend
from models.tempo import pace_and_tempo, stretch
from server.errors import InvalidRequest, ModelNotFound
from server.scheduler import ModelScheduler, Ticket
from server.text import normalize, split_sentences

LOOKAHEAD = 4
"""Sentences of one request queued ahead of the one being sent."""

FIRST_SENTENCE_CHARS = 120
"""The first piece is cut shorter (at a clause) so the first audio comes early."""


class SpeechObserver(Protocol):
    """Told how much audio was spoken, for metrics."""

    def synthesized(self, model: str, seconds: float) -> None: ...


@dataclass(eq=False)
class SpeechEngine:
    """One loaded text-to-speech model and the scheduler in front of it."""

    name: str
    backend_name: str
    backend: TextToSpeechBackend
    scheduler: ModelScheduler[SpeechItem, AudioArray]


@dataclass(frozen=True)
class Voice:
    """A voice of a speech model, as a client names it, and what speaks it."""

    model: str
    name: str
    engine: SpeechEngine
    speaker: Speaker | None = None
    speed: float = 1.0

    @property
    def sample_rate(self) -> int:
        return self.engine.backend.sample_rate


@dataclass
class SpeechService:
    """The catalog of speech models and their voices, and the one way to speak."""

    voices: dict[str, dict[str, Voice]] = field(default_factory=dict)
    """Model id -> voice name -> voice."""
    observer: SpeechObserver | None = None

    @property
    def engines(self) -> list[SpeechEngine]:
        """Every loaded engine once, however many voices share it."""
        unique = {
            id(v.engine): v.engine for voices in self.voices.values() for v in voices.values()
        }
        return list(unique.values())

    def voice(self, model: str, name: str) -> Voice:
        """The voice ``name`` of ``model``, in any case ("Alloy" is alloy, as OpenAI
        takes it); 404 for a model, 400 listing the choices."""
        try:
            voices = self.voices[model]
        except KeyError:
            raise ModelNotFound(model) from None
        if name in voices:
            return voices[name]
        folded = name.casefold()
        # The catalog refuses names that differ only in case, so this finds one at most.
        for voice_name, voice in voices.items():
            if voice_name.casefold() == folded:
                return voice
        choices = ", ".join(voices)
        raise InvalidRequest(
            f"Voice '{name}' is not available for model '{model}'. Choose one of: {choices}.",
            param="voice",
        )

    @staticmethod
    def sentences(text: str) -> list[str]:
        """The pieces ``text`` is spoken in; a 400 if nothing in it can be spoken."""
        pieces = split_sentences(normalize(text), first_max_chars=FIRST_SENTENCE_CHARS)
        if not pieces:
            raise InvalidRequest(
                "The input has nothing to speak: no letters or digits remain once "
                "markup, emoji and control characters are removed.",
                param="input",
            )
        return pieces

    async def speak(
        self, voice: Voice, sentences: list[str], speed: float = 1.0
    ) -> AsyncGenerator[AudioArray, None]:
        """Audio for each sentence, in order, each as soon as it and those before are done,
        at ``speed`` (see the module's docstring); sentences with no audio are skipped.

        The request holds one place in its engine's queue while it is being spoken;
        a full queue refuses it (429) at the first step, before any work is done. If
        no sentence gives any audio, the first step raises a 400 on ``input``.
        """
        scheduler = voice.engine.scheduler
        pace, tempo = pace_and_tempo(speed, voice.speed)
        items = iter(SpeechItem(text, speaker=voice.speaker, speed=pace) for text in sentences)
        spoken = False
        with scheduler.admit(work=sum(len(text) for text in sentences)) as ticket:
            pending: deque[asyncio.Future[AudioArray]] = deque()
            try:
                _top_up(pending, items, scheduler, ticket, 1)
                while pending:
                    audio = await pending[0]
                    pending.popleft()
                    _top_up(pending, items, scheduler, ticket, LOOKAHEAD)
                    if not audio.size:
                        continue
                    if tempo != 1.0:
                        audio = await asyncio.to_thread(stretch, audio, voice.sample_rate, tempo)
                    if self.observer is not None:
                        self.observer.synthesized(voice.model, len(audio) / voice.sample_rate)
                    spoken = True
                    yield audio
            finally:  # the consumer stopped early or failed: withdraw what is queued
                for future in pending:
                    future.cancel()
        if not spoken:
            raise InvalidRequest(
                f"Voice '{voice.name}' of model '{voice.model}' produced no audio for this "
                "input: it has no words this voice can pronounce (for example, text in a "
                "script or language the voice does not read).",
                param="input",
            )


def _top_up(
    pending: deque[asyncio.Future[AudioArray]],
    items: Iterator[SpeechItem],
    scheduler: ModelScheduler[SpeechItem, AudioArray],
    ticket: Ticket,
    limit: int,
) -> None:
    while len(pending) < limit:
        item = next(items, None)
        if item is None:
            return
        pending.append(scheduler.submit(item, ticket))
