"""Piper (VITS) voices, batched: sentences of one speaker and pace share forward passes.

A Piper graph takes ``input`` [B, L] phoneme ids with their true lengths and
returns ``output`` [B, 1, 1, T], every row padded to the longest. The masks inside
VITS keep a row's padding from touching its speech, but the graph does not say
where each row's audio ends. So :meth:`PiperBackend.load` marks the ``Ceil``
tensor (frames per phoneme id, ``w_ceil``) as a second output, the way
``piper.patch_voice_with_alignment`` does, and a row's audio is
``sum(w_ceil[:length]) * hop_length`` samples.

What batching costs: a shorter row's last ~80 ms differ from the row alone by up
to ~1e-4 (about 4 LSB of 16-bit audio): the decoder has no mask, and its
convolutions see the padding's bias after the row's end. Elsewhere rows agree to
~3e-5 (different GEMM shapes), far below hearing. On a CPU padding costs more
than batching saves, so there only rows of equal length share a pass
(:data:`CPU_MAX_PADDING`); on a GPU a batch is one pass, up to the bounds below.

What a pass costs in memory is its audio: ~20 MiB a second on a CPU, for every row
padded to the longest. A request of a hundred short clauses (``"A. " * 200``: espeak-ng
reads each initial as a clause) is a hundred rows of equal length, and ``speed`` 0.25
makes each four times as long: one pass of that took 3 GB. So a pass holds at most
``max_pass_seconds`` of audio (rows times the longest row, estimated from the ids by
:data:`PACE` before the run, see :func:`plan_passes`), and rows are cut short enough
(:meth:`PiperBackend.max_phonemes`) that one row alone fits it at the request's pace.

``piper.PiperVoice`` is kept for its config, phonemizer and id map only; its
``synthesize`` normalizes each sentence to full scale, which would make loudness
depend on the sentence, so this backend only clips. The graph draws its own noise
(two ``RandomNormalLike`` nodes that no seed reaches): only with both noise scales
at 0 are equal items equal audio.

espeak-ng, which phonemizes inside the piper wheel, dies of a segmentation fault
on some text (a long clause of abbreviations: ``"i.e., " * 60``, ``"a." * 110``),
which would take the whole server down. So it runs in a child process
(:class:`_Phonemizer`): a crash or a hang costs a restart, and the text is read
again in short pieces, which it has read safely in every test.
"""

from __future__ import annotations

import json
import re
import select
import subprocess
import sys
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from models.base import AudioArray, Speaker, SpeechItem
from models.hibari import split_phonemes, split_pieces
from models.onnx_session import MAX_PASS_SECONDS, Pace, onnx_session, release_memory

MAX_PHONEMES = 400
"""Longer sentences are cut (at clauses, else words) so that rows and memory stay bounded."""
MAX_PASS_IDS = 16 * 512
"""Padded phoneme ids one forward pass may hold; more rows take several passes."""
PACE = Pace(base_s=0.3, per_unit_s=0.045, frame_s=256 / 22_050)
"""Seconds of audio per row of phoneme ids at ``speed / length_scale`` 1, an upper estimate.
Measured with en_US-joe-medium on 467 rows of 13-461 ids cut from hostile text (initials,
"Oh!", letters, digits, ellipses, dashes, one long word): at most 0.3 s + 0.042 s an id
(pauses: "Well, — um — so, — yes"); ordinary sentences are ~0.027 s an id. Its frame is
joe's (hop 256 at 22.05 kHz); :attr:`PiperBackend.estimate` uses each voice's own."""
MIN_PIECE_PHONEMES = 8
"""Rows are never cut shorter than this, however small the pass budget."""
CPU_MAX_PADDING = 0.0
"""On a CPU a padded frame costs as much as a spoken one and one pass over many rows
saves little, so only rows of equal length share a pass there. Measured on 2 cores
with 8 different sentences (71-153 ids): RTF 0.028 one row per pass, 0.031 with 10%
padding allowed, 0.041 all in one pass."""
_EMOJI = re.compile(
    "[\U0001f000-\U0001faff\u2600-\u27bf\u2b00-\u2bff\ufe0e\ufe0f\u200d\U000e0000-\U000e007f]"
)
"""Pictographs, which espeak-ng would read out by name ("grinning face")."""
SAFE_CHARS = 100
"""After a crash, text is phonemized again in pieces this short (espeak-ng's crashes
came from clauses over ~150 characters dense in abbreviations)."""
PHONEMIZE_TIMEOUT_S = 30.0
"""espeak-ng reads 3000 characters in milliseconds; a call this long is a hang."""


class PiperBackend:
    """A Piper ONNX voice and its ``.onnx.json`` config."""

    max_batch_size = 16

    def __init__(
        self,
        model_path: str,
        config_path: str,
        *,
        device: str = "cpu",
        cpu_threads: int = 1,
        noise_scale: float | None = None,
        noise_w_scale: float | None = None,
        max_pass_seconds: float = MAX_PASS_SECONDS,
    ) -> None:
        self.model_path = model_path
        self.config_path = config_path
        self.device = device
        self.cpu_threads = cpu_threads
        self.noise_scale = noise_scale
        self.noise_w_scale = noise_w_scale
        self._voice: Any = None
        self._outputs: list[str] = []
        self._phonemizer: _Phonemizer | None = None
        self.max_padding = CPU_MAX_PADDING if device == "cpu" else float("inf")
        """Padded ids over real ids, less one, that a forward pass may carry."""
        self.max_pass_seconds = max_pass_seconds
        """Estimated audio (rows times the longest row) one forward pass may make."""

    # -- loading -------------------------------------------------------------------

    def load(self) -> None:
        import onnx
        from piper import PiperVoice
        from piper.config import PiperConfig
        from piper.patch_voice_with_alignment import add_alignment_output

        with open(self.config_path, encoding="utf-8") as file:
            config = PiperConfig.from_dict(json.load(file))
        model = onnx.load(self.model_path)
        ceil = [out for node in model.graph.node if node.op_type == "Ceil" for out in node.output]
        if len(ceil) != 1:
            raise ValueError(f"{self.model_path}: no single Ceil tensor (phoneme widths)")
        if ceil[0] not in {output.name for output in model.graph.output}:
            add_alignment_output(model, ceil[0])
        self._outputs = [model.graph.output[0].name, ceil[0]]
        session = onnx_session(model.SerializeToString(), self.device, self.cpu_threads)
        self._voice = PiperVoice(session=session, config=config)
        self._phonemizer = _Phonemizer(self.config_path)
        self._phonemizer("")  # waits for the child: a phonemizer that cannot start fails here

    @property
    def config(self) -> Any:
        if self._voice is None:
            raise RuntimeError("PiperBackend.load() was not called")
        return self._voice.config

    @property
    def sample_rate(self) -> int:
        return int(self.config.sample_rate)

    # -- speakers and batches ------------------------------------------------------

    def check_speaker(self, speaker: Speaker | None) -> None:
        self._speaker_id(speaker)

    def _speaker_id(self, speaker: Speaker | None) -> int | None:
        """The ``sid`` to feed: ``None`` for a single-speaker model."""
        config = self.config
        count = int(config.num_speakers)
        if count <= 1:
            if speaker is not None:
                raise ValueError(f"this Piper voice has one speaker, not {speaker!r}: omit it")
            return None
        names: dict[str, int] = dict(config.speaker_id_map)
        if speaker is None:
            return int(config.default_speaker_id)
        if isinstance(speaker, int) and not isinstance(speaker, bool) and 0 <= speaker < count:
            return speaker
        if isinstance(speaker, str) and speaker in names:
            return names[speaker]
        listed = ", ".join(sorted(names)) or "none"
        raise ValueError(
            f"unknown speaker {speaker!r}: use an id from 0 to {count - 1} or a name ({listed})"
        )

    def batch_key(self, item: SpeechItem) -> Hashable:
        """One speaker and one pace per forward pass: both are per-call inputs."""
        return self._key(item)

    def _key(self, item: SpeechItem) -> tuple[int | None, float]:
        return (self._speaker_id(item.speaker), item.speed)

    # -- synthesis -----------------------------------------------------------------

    def synthesize_batch(self, items: Sequence[SpeechItem]) -> list[AudioArray]:
        if not items:
            return []
        keys = {self._key(item) for item in items}
        if len(keys) != 1:
            raise ValueError("items with different batch keys cannot share a batch")
        speaker, speed = keys.pop()
        limit = self.max_phonemes(speed)
        rows = [
            (index, position, ids)
            for index, item in enumerate(items)
            for position, ids in enumerate(self._rows(item.text, limit))
        ]
        rows.sort(key=lambda row: len(row[2]))  # similar lengths share a pass: less padding
        audio: dict[tuple[int, int], AudioArray] = {}
        for chunk in self.plan([len(ids) for _, _, ids in rows], speed):
            picked = rows[chunk.start : chunk.stop]
            spoken = self._run([ids for _, _, ids in picked], speaker, speed)
            for (index, position, _), samples in zip(picked, spoken, strict=True):
                audio[index, position] = samples
        parts: list[list[AudioArray]] = [[] for _ in items]
        for index, position in sorted(audio):  # each item's pieces back in reading order
            parts[index].append(audio[index, position])
        release_memory(sum(len(samples) for samples in audio.values()) / self.sample_rate)
        return [_join(samples) for samples in parts]

    @property
    def estimate(self) -> Pace:
        """:data:`PACE` with this voice's frame (``hop_length`` samples)."""
        return replace(PACE, frame_s=int(self.config.hop_length) / self.sample_rate)

    def pace(self, speed: float) -> float:
        """The pace :data:`PACE` is read at: ``speed`` over the voice's ``length_scale``."""
        return speed / float(self.config.length_scale)

    def max_phonemes(self, speed: float) -> int:
        """The longest row, in phonemes, that alone fits a pass at ``speed``.

        A row is ~2 ids a phoneme (each phoneme is followed by a pad id) and 3 more
        (start, pad, end). With a 15 s budget: 161 phonemes at speed 1 (~8 s of ordinary
        speech, ~25 words), 36 at speed 0.25.
        """
        ids = self.estimate.max_units(self.max_pass_seconds, self.pace(speed))
        return min(MAX_PHONEMES, max(MIN_PIECE_PHONEMES, (ids - 3) // 2))

    def plan(self, lengths: Sequence[int], speed: float) -> list[range]:
        """:func:`plan_passes` for rows of ``lengths`` ids at ``speed`` on this voice."""
        budget = PassBudget(MAX_PASS_IDS, self.max_pass_seconds, self.max_padding)
        return plan_passes(lengths, budget, self.pace(speed), self.estimate)

    def _rows(self, text: str, max_phonemes: int = MAX_PHONEMES) -> list[list[int]]:
        """Phoneme ids per sentence of ``text``, long sentences cut into pieces."""
        voice = self._voice
        assert self._phonemizer is not None
        known = voice.config.phoneme_id_map
        rows: list[list[int]] = []
        text = _EMOJI.sub(" ", text).encode("utf-8", "ignore").decode("utf-8")  # no surrogates
        for sentence in self._phonemizer(text):
            phonemes = [phoneme for phoneme in sentence if phoneme in known]
            for piece in split_phonemes(phonemes, max_phonemes):
                rows.append(list(voice.phonemes_to_ids(piece)))
        return rows

    def _run(self, rows: list[list[int]], speaker: int | None, speed: float) -> list[AudioArray]:
        config = self.config
        lengths = np.array([len(row) for row in rows], np.int64)
        ids = np.zeros((len(rows), int(lengths.max())), np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
        noise = config.noise_scale if self.noise_scale is None else self.noise_scale
        noise_w = config.noise_w_scale if self.noise_w_scale is None else self.noise_w_scale
        scales = np.array([noise, config.length_scale / speed, noise_w], np.float32)
        feeds = {"input": ids, "input_lengths": lengths, "scales": scales}
        if speaker is not None:
            feeds["sid"] = np.full(len(rows), speaker, np.int64)
        audio, widths = self._voice.session.run(self._outputs, feeds)
        hop = int(config.hop_length)
        out: list[AudioArray] = []
        for i, length in enumerate(lengths):
            frames = int(np.rint(widths[i].reshape(-1)[:length].sum()))
            out.append(np.asarray(audio[i].reshape(-1)[: frames * hop], dtype=np.float32))
        return out


@dataclass(frozen=True)
class PassBudget:
    """What one forward pass may hold."""

    ids: int
    """Padded phoneme ids: rows times the longest row."""
    seconds: float
    """Estimated audio (:data:`PACE`): rows times the longest row's."""
    padding: float
    """Padded ids over real ids, less one."""


def plan_passes(
    lengths: Sequence[int], budget: PassBudget, pace: float, estimate: Pace = PACE
) -> list[range]:
    """Consecutive runs of rows that share a forward pass, for rows of ``lengths`` ids
    spoken at ``pace`` (speed over ``length_scale``), their audio as ``estimate`` says;
    sorted lengths pad least.

    A run grows while it stays within every bound of ``budget``, every row padded to the
    run's longest; every row is in exactly one run, and a row that alone is over a bound
    runs alone (rows are cut beforehand so that this does not happen, see
    :meth:`PiperBackend.max_phonemes`).
    """
    passes: list[range] = []
    start = 0
    while start < len(lengths):
        end, real, longest = start + 1, lengths[start], lengths[start]
        while end < len(lengths):
            count, wider, real_after = (
                end - start + 1,
                max(longest, lengths[end]),
                real + lengths[end],
            )
            padded = count * wider
            if (
                padded > budget.ids
                or padded > (1 + budget.padding) * real_after
                or count * estimate.seconds(wider, pace) > budget.seconds
            ):
                break
            end, real, longest = end + 1, real_after, wider
        passes.append(range(start, end))
        start = end
    return passes


def _join(parts: list[AudioArray]) -> AudioArray:
    if not parts:
        return np.zeros(0, np.float32)
    return np.clip(np.concatenate(parts), -1.0, 1.0).astype(np.float32, copy=False)


class _Crashed(Exception):
    """The phonemizer process died or hung; it has been restarted."""


_CHILD = """
import json, sys
from piper import PiperVoice
from piper.config import PiperConfig

with open(sys.argv[1], encoding="utf-8") as file:
    voice = PiperVoice(session=None, config=PiperConfig.from_dict(json.load(file)))
for line in sys.stdin:
    try:
        reply = voice.phonemize(json.loads(line))
    except Exception as exc:
        reply = {"error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps(reply) + "\\n")
    sys.stdout.flush()
"""
"""The child: one JSON text per line in, its phonemes per sentence (or an error) out.
A plain ``python -c`` rather than multiprocessing, whose spawn re-runs the parent's
main module and so depends on how the server was started."""


class _Phonemizer:
    """``PiperVoice.phonemize`` in a child process, so that espeak-ng's crashes are not ours."""

    def __init__(self, config_path: str) -> None:
        self.config_path = config_path
        self._process = self._start()

    def _start(self) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", _CHILD, self.config_path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )

    def _restart(self) -> None:
        self._process.kill()
        self._process.wait()
        for pipe in (self._process.stdin, self._process.stdout):
            if pipe is not None:
                pipe.close()
        self._process = self._start()

    def __call__(self, text: str) -> list[list[str]]:
        """Phonemes per sentence; ``ValueError`` if even short pieces crash espeak-ng."""
        try:
            return self._ask(text)
        except _Crashed:
            pass
        try:
            pieces = ["".join(piece) for piece in split_pieces(text, SAFE_CHARS)]
            return [sentence for piece in pieces for sentence in self._ask(piece)]
        except _Crashed:
            raise ValueError("espeak-ng could not phonemize this text") from None

    def _ask(self, text: str) -> list[list[str]]:
        stdin, stdout = self._process.stdin, self._process.stdout
        assert stdin is not None and stdout is not None
        line = ""
        try:
            stdin.write(json.dumps(text) + "\n")
            stdin.flush()
            # one reply per request, read whole: nothing waits in stdout's buffer
            if select.select([stdout], [], [], PHONEMIZE_TIMEOUT_S)[0]:
                line = stdout.readline()
        except OSError:  # the child is gone
            pass
        if not line:
            self._restart()
            raise _Crashed
        reply = json.loads(line)
        if isinstance(reply, dict):
            raise ValueError(f"could not phonemize this text: {reply.get('error')}")
        phonemes: list[list[str]] = reply
        return phonemes
