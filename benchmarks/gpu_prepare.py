"""Write the bundle ``benchmarks.gpu_whisper`` carries to a GPU box (about 45 MB).

Run on a full install (``make gpu-bundle``)::

    python -m benchmarks.gpu_prepare --out .gpu

The bundle holds:

- ``tiny.en-int8/``: the packaged Whisper tiny.en, quantized to int8 exactly as
  CTranslate2's converter would (half the size of its float16, which keeps the
  bundle under a 60 MiB carry limit), in CTranslate2's format, so that the GPU box
  runs our converter on it as a server would;
- ``base-tokenizer.json``: Whisper base's multilingual tokenizer, for the
  random-weight large-v3 shapes;
- ``speech.npz``: windows of real speech, 16 kHz float32 (single sentences of the
  packaged Piper voice, and 30-second windows of several sentences);
- ``expected.json``: the text the torch engine writes for each window on this CPU
  in float32 from the same int8 weights (what the GPU must reproduce), and, for
  reference, CTranslate2's own greedy text from the same file.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from models.base import SAMPLE_RATE, TranscriptionItem
from models.ct2_convert import convert_whisper, quantize_int8, read_ct2_model, write_ct2_model
from models.registry import resolve_weights
from models.whisper_ct2 import WhisperCT2Backend
from models.whisper_torch import WhisperTorchEngine
from server.audio import AudioLimits, decode_audio
from tests.speech import SENTENCES, spoken_wav

SHORT = 6
"""Single-sentence windows."""
LONG = 2
"""30-second windows of several sentences."""


def speech_windows() -> list[np.ndarray]:
    limits = AudioLimits(max_seconds=3600, max_decoded_bytes=1 << 32)
    shorts = [decode_audio(spoken_wav(text), limits) for text in SENTENCES[:SHORT]]
    longs = []
    for k in range(LONG):
        texts = [*SENTENCES[k * 5 :], *SENTENCES][:9]
        audio = decode_audio(spoken_wav(*texts, pause_seconds=0.6), limits)
        longs.append(audio[: 30 * SAMPLE_RATE])
    return [*shorts, *longs]


def quantized_tiny_en(out: Path) -> Path:
    source = Path(resolve_weights("embedded:tiny.en"))
    target = out / "tiny.en-int8"
    target.mkdir(parents=True, exist_ok=True)
    write_ct2_model(quantize_int8(read_ct2_model(source / "model.bin")), target / "model.bin")
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copy(source / name, target / name)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(".gpu"))
    parser.add_argument("--cache", type=Path, default=Path("/tmp/voxserve-gpu-prepare"))
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    weights = quantized_tiny_en(out)
    shutil.copy(
        Path(resolve_weights("embedded:base")) / "tokenizer.json", out / "base-tokenizer.json"
    )
    windows = speech_windows()
    arrays: dict[str, Any] = {f"w{i:02d}": w for i, w in enumerate(windows)}
    np.savez(out / "speech.npz", **arrays)
    items = [TranscriptionItem(audio) for audio in windows]
    engine = WhisperTorchEngine(convert_whisper(weights, args.cache), device="cpu", rows=len(items))
    engine.load()
    texts = [result.text for result in engine.transcribe_batch(items)]
    ct2 = WhisperCT2Backend(
        str(weights), device="cpu", compute_type="float32", cpu_threads=2, beam_size=1
    )
    ct2.load()
    ct2_texts = [result.text for result in ct2.transcribe_batch(items)]
    expected = {
        "reference": "torch engine, CPU, float32, tiny.en int8 weights converted",
        "texts": texts,
        "ctranslate2_texts": ct2_texts,
        "ctranslate2_equal": texts == ct2_texts,
        "seconds": [round(len(w) / SAMPLE_RATE, 2) for w in windows],
    }
    (out / "expected.json").write_text(json.dumps(expected, indent=2))
    print(json.dumps(expected, indent=2))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"bundle: {size / 2**20:.1f} MiB in {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
