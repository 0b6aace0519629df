"""Decode uploads to 16 kHz mono, refusing what would cost too much before paying.

Runs in a worker thread, never on the event loop. A small file can claim hours of
audio (digital silence compresses to almost nothing), so the limits are enforced
in three steps, each cheaper than the next would be:

1. the header: a container outside :data:`SUPPORTED_CONTAINERS` (judged by the
   content, not the file's name), a sample rate or channel count
   no microphone produces, or a declared duration over the limit is refused
   before any audio is decoded;
2. the packets: their durations are summed without decoding (a tenth of a second
   per hour of audio), so a file that lies in its header, or has none, is still
   refused before the costly decode and resample;
3. the frames: decoded duration and decoded bytes are counted as frames come out
   of the decoder, so a file whose packets lie too stops at the limit. Memory is
   the output array, never the whole decoded stream.

The output is 16-bit PCM (32 kB per second of audio: four hours are 460 MB), what
faster-whisper's own ``decode_audio`` resamples to before dividing by 32768, so
nothing is lost against the library; it is made float a window at a time.

Decoding stops between packets once a cancellation token is set (the client has
gone), and, as ffmpeg does, skips a packet the decoder calls invalid data: two
MP3 files joined by ``cat`` carry the second one's ID3 and Xing headers in the
middle. A file with more such packets than :func:`corrupt_allowance` is refused.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
import numpy.typing as npt

from models.base import SAMPLE_RATE, AudioArray
from models.windowing import CancelToken, as_float, stop_if_cancelled
from server.errors import InvalidAudio

PCM16 = npt.NDArray[np.int16]
"""Decoded audio: mono 16 kHz 16-bit samples."""

OPENAI_EXTENSIONS = ("flac", "m4a", "mp3", "mp4", "mpeg", "mpga", "oga", "ogg", "wav", "webm")
"""The file types OpenAI's API reference lists."""
MORE_EXTENSIONS = (
    *("opus", "weba", "mka", "mkv", "mov", "3gp"),  # other names of the containers above
    *("aac", "aif", "aiff", "amr", "caf", "wma"),  # more containers
)
"""Names people give files of the same containers (``.opus``: Ogg; ``.weba``, ``.mka``,
``.mkv``: Matroska; ``.mov``, ``.3gp``: MP4's family) and of a few more that phones and
desktops record in: ADTS AAC, AMR, AIFF, Apple CAF, Windows Media Audio."""
SUPPORTED_EXTENSIONS = OPENAI_EXTENSIONS + MORE_EXTENSIONS
"""What the error messages list. A file is judged by its content, never by its name:
a WAV named ``.mp3``, or named ``recording`` or ``x.bin``, is decoded as the WAV it is."""
SUPPORTED_CONTAINERS = frozenset(
    {
        *("wav", "mp3", "flac", "ogg", "matroska", "webm", "mov", "mp4", "m4a", "mpeg"),
        *("3gp", "3g2", "aac", "amr", "aiff", "caf", "asf"),
    }
)
"""ffmpeg's demuxers (as PyAV names them) that an upload's content may be detected as.

Each holds its media inline. ffmpeg can also probe playlists (``hls``), concat lists,
image sequences and dozens of exotic formats that would widen what hostile bytes reach;
anything detected as one of those is refused with the list of supported formats."""
SUPPORTED_LIST = f"{', '.join(OPENAI_EXTENSIONS)} (OpenAI's list), and {', '.join(MORE_EXTENSIONS)}"
MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 384_000
"""The highest rate studio converters use; anything above is a forged header."""
MAX_CHANNELS = 32
CORRUPT_GRACE = 4
"""Corrupt packets skipped in any file: a few joins (each costs one or two packets)."""
GOOD_PER_CORRUPT = 10
"""Beyond the grace, one more skipped packet per this many good ones. A file that is
mostly garbage (random bytes resync as runs of bad packets) stays a 400."""


@dataclass(frozen=True, slots=True)
class AudioLimits:
    """What one upload may decode to (``Settings`` fills these in)."""

    max_seconds: float
    """Audio longer than this is refused."""
    max_decoded_bytes: int
    """Bytes out of the decoder (all channels, native rate and sample format)."""


def decode_audio(data: bytes, limits: AudioLimits, filename: str | None = None) -> AudioArray:
    """Every audio sample in ``data``, mono float32 at 16 kHz, or :class:`InvalidAudio`."""
    return as_float(decode_pcm16(data, limits, filename))


def decode_pcm16(
    data: bytes,
    limits: AudioLimits,
    filename: str | None = None,
    *,
    cancel: CancelToken | None = None,
) -> PCM16:
    """Every audio sample in ``data``, mono 16-bit at 16 kHz, or :class:`InvalidAudio`.

    Half the memory of float; ``cancel`` stops it (``Abandoned``) between packets.
    ``filename`` is not consulted: the content decides, since clients name files
    wrongly (a ``.opus`` that is Ogg, a recording with no extension, a WAV renamed).
    """
    del filename  # kept so that callers need not know; see the docstring
    if not data:
        raise InvalidAudio("The uploaded file is empty (0 bytes).")
    try:
        seconds = _check_container(data, limits, cancel)
        return _decode(data, limits, seconds, cancel)
    except InvalidAudio:
        raise
    except (av.error.FFmpegError, ValueError, IndexError, OverflowError) as exc:
        raise InvalidAudio(
            f"The uploaded file could not be decoded as audio; supported formats: {SUPPORTED_LIST}."
        ) from exc


def corrupt_allowance(good_packets: int) -> int:
    """How many corrupt packets a file with ``good_packets`` decodable ones may skip."""
    return CORRUPT_GRACE + good_packets // GOOD_PER_CORRUPT


def _check_container(data: bytes, limits: AudioLimits, cancel: CancelToken | None) -> float:
    """Header and packet checks; returns the audio's duration by its packets (0 if unknown)."""
    with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
        names = set(container.format.name.split(","))
        if not names & SUPPORTED_CONTAINERS:
            raise InvalidAudio(
                f"The uploaded file is {container.format.long_name or container.format.name}, "
                f"not a supported type. Supported formats: {SUPPORTED_LIST}."
            )
        if not container.streams.audio:
            raise InvalidAudio("The uploaded file has no audio stream.")
        stream = container.streams.audio[0]
        if stream.codec_context is None:  # a codec tag ffmpeg has no decoder for
            raise InvalidAudio(
                f"The uploaded file's audio codec is not supported. Supported formats: "
                f"{SUPPORTED_LIST}."
            )
        _check_shape(stream.codec_context.sample_rate, stream.codec_context.channels)
        _check_seconds(_declared_seconds(container, stream), limits, "declares")
        seconds = Fraction(0)
        for count, packet in enumerate(container.demux(stream)):
            if count % 256 == 0:
                stop_if_cancelled(cancel)
            if packet.duration and packet.time_base:
                seconds += packet.duration * packet.time_base
                if seconds > limits.max_seconds:
                    _check_seconds(float(seconds), limits, "holds more than")
        return float(seconds)


def _declared_seconds(container: av.container.InputContainer, stream: av.AudioStream) -> float:
    """The audio stream's declared length; the container's only when it holds nothing else.

    A video's container declares the video's length: ten hours of video with three
    seconds of sound is three seconds of audio to decode.
    """
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if len(container.streams) == 1:
        return (container.duration or 0) / av.time_base
    return 0.0  # the packets are counted next


def _decode(
    data: bytes, limits: AudioLimits, expected_seconds: float, cancel: CancelToken | None
) -> PCM16:
    max_samples = int(limits.max_seconds * SAMPLE_RATE)
    expected = int(expected_seconds * SAMPLE_RATE) + SAMPLE_RATE
    out = _Samples(min(max_samples, expected), limit=max_samples + SAMPLE_RATE)
    native_seconds = 0.0
    decoded_bytes = 0
    good = corrupt = 0
    with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        for packet in container.demux(stream):
            stop_if_cancelled(cancel)
            try:
                frames = packet.decode()
            except av.error.InvalidDataError:
                corrupt += 1  # ffmpeg's own tools skip it, and so do we, up to a bound
                continue
            if packet.size:  # not the empty packet that flushes the decoder
                good += 1
            for frame in frames:
                channels = len(frame.layout.channels)
                _check_shape(frame.sample_rate, channels)
                native_seconds += frame.samples / frame.sample_rate
                decoded_bytes += frame.samples * channels * frame.format.bytes
                _check_seconds(native_seconds, limits, "decodes to more than")
                _check_bytes(decoded_bytes, limits)
                if channels > 1 and frame.layout.channels[0].name == "NONE":
                    frame = _downmix(frame)  # no layout ffmpeg can downmix
                for resampled in resampler.resample(frame):
                    out.append(resampled.to_ndarray().reshape(-1))
        for resampled in resampler.resample(None):
            out.append(resampled.to_ndarray().reshape(-1))
    if corrupt > corrupt_allowance(good):
        raise InvalidAudio(
            f"The uploaded file is damaged: {corrupt} of its {good + corrupt} audio packets "
            f"could not be decoded. Supported formats: {SUPPORTED_LIST}."
        )
    if not len(out):
        raise InvalidAudio("The uploaded file contains no audio samples.")
    return out.array()[:max_samples]


def _downmix(frame: av.AudioFrame) -> av.AudioFrame:
    """The mean of the channels, as float, for counts with no standard layout (9, 11 ...).

    ffmpeg's resampler needs a named layout to downmix; 10, 12, 16 and 24 channels
    have one, the counts between do not.
    """
    samples = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if not frame.format.is_planar:
        samples = samples.reshape(-1, channels).T
    scale = {"u8": 128.0, "s16": 32768.0, "s32": 2147483648.0}.get(frame.format.name.rstrip("p"))
    mono = samples.astype(np.float32).mean(axis=0, keepdims=True)
    if frame.format.name.startswith("u8"):
        mono -= 128.0
    if scale:
        mono /= scale
    out = av.AudioFrame.from_ndarray(np.ascontiguousarray(mono), format="flt", layout="mono")
    out.sample_rate = frame.sample_rate
    return out


def _check_shape(sample_rate: int | None, channels: int | None) -> None:
    if sample_rate and not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise InvalidAudio(
            f"The audio claims a sample rate of {sample_rate} Hz; supported rates are "
            f"{MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz."
        )
    if channels and channels > MAX_CHANNELS:
        raise InvalidAudio(
            f"The audio has {channels} channels; at most {MAX_CHANNELS} are supported."
        )


def _check_bytes(decoded_bytes: int, limits: AudioLimits) -> None:
    if decoded_bytes > limits.max_decoded_bytes:
        raise InvalidAudio(
            f"The audio decodes to more than the {limits.max_decoded_bytes} bytes "
            "this server accepts."
        )


def _check_seconds(seconds: float, limits: AudioLimits, verb: str) -> None:
    if seconds > limits.max_seconds:
        raise InvalidAudio(
            f"The audio {verb} {seconds:.0f} seconds; this server accepts at most "
            f"{limits.max_seconds:g} seconds."
        )


class _Samples:
    """An int16 buffer that grows by doubling: one copy at the end, not a list of chunks."""

    def __init__(self, capacity: int, *, limit: int) -> None:
        self._buffer = np.empty(max(capacity, SAMPLE_RATE), dtype=np.int16)
        self._size = 0
        self._limit = limit
        """Growth stops here: the caller refuses audio longer than this."""

    def __len__(self) -> int:
        return self._size

    def append(self, samples: np.ndarray) -> None:
        end = self._size + len(samples)
        if end > len(self._buffer):
            grown = np.empty(max(end, min(2 * len(self._buffer), self._limit)), np.int16)
            grown[: self._size] = self._buffer[: self._size]
            self._buffer = grown
        self._buffer[self._size : end] = samples
        self._size = end

    def array(self) -> PCM16:
        """The samples; a view when little is spare (the usual case: packets told the size)."""
        spare = len(self._buffer) - self._size
        view = self._buffer[: self._size]
        return view if spare <= self._size // 8 else view.copy()
