"""Encode synthesized speech to the response formats of ``POST /v1/audio/speech``.

Speech is streamed: the model hands over float32 chunks as it produces them, and
the client should hear the first words before the last ones exist. So every
format is encoded incrementally — :meth:`StreamEncoder.encode` returns whatever
bytes the codec and muxer have ready, and :meth:`StreamEncoder.finish` flushes
the rest. The concatenation of everything returned is one valid file.

Whatever rate the model speaks at, the output is mono at 24 kHz, as OpenAI's is.
One stateful resampler per response converts rate and sample format, so chunk
boundaries neither click nor drop samples, and also cuts the audio into the
frame size the codec wants, keeping the remainder until the next chunk.

Runs in a worker thread, never on the event loop; an instance is not shared.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Final, Literal

import av
import numpy as np
import numpy.typing as npt
from av.audio.stream import AudioStream

OUTPUT_SAMPLE_RATE: Final = 24_000

SpeechFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]

CONTENT_TYPES: Final[dict[SpeechFormat, str]] = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",  # Opus in Ogg, the container browsers and OpenAI use
    "aac": "audio/aac",  # raw ADTS frames: streamable, unlike MP4
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",  # 16-bit signed little-endian mono at 24 kHz, no header
}

# "Unknown length": a stream cannot go back to fill in the sizes, so, as OpenAI
# and ffmpeg do for pipes, they are left at the maximum. Readers then take the
# data chunk to run to the end of the file.
_UNKNOWN_SIZE: Final = 0xFFFFFFFF
WAV_HEADER: Final = struct.pack(
    "<4sI4s4sIHHIIHH4sI",
    b"RIFF",
    _UNKNOWN_SIZE,
    b"WAVE",
    b"fmt ",
    16,  # size of the PCM fmt chunk
    1,  # WAVE_FORMAT_PCM
    1,  # mono
    OUTPUT_SAMPLE_RATE,
    OUTPUT_SAMPLE_RATE * 2,  # bytes per second
    2,  # bytes per frame
    16,  # bits per sample
    b"data",
    _UNKNOWN_SIZE,
)


@dataclass(frozen=True)
class _Codec:
    container: str
    codec: str
    sample_format: str
    bit_rate: int | None
    container_options: dict[str, str] = field(default_factory=dict)


# Speech is mono and band-limited to 12 kHz, so modest bitrates are transparent.
_CODECS: Final[dict[str, _Codec]] = {
    # No ID3 tag and no Xing header: a stream starts straight with audio frames
    # (and the Xing header could only be filled in by seeking back anyway).
    "mp3": _Codec("mp3", "libmp3lame", "fltp", 96_000, {"id3v2_version": "0", "write_xing": "0"}),
    # The Ogg muxer holds packets until a page spans page_duration (1 s by
    # default); 100 ms pages let audio out promptly for ~2 kbit/s of overhead.
    "opus": _Codec("ogg", "libopus", "flt", 48_000, {"page_duration": "100000"}),
    "aac": _Codec("adts", "aac", "fltp", 64_000),
    # On a sink that cannot seek, the FLAC muxer skips rewriting STREAMINFO at
    # the end; the stream stays decodable, only the total length is unknown.
    # The 8 KiB of padding it reserves for later tag edits is no use to a stream.
    "flac": _Codec("flac", "flac", "s16", None, {"metadata_header_padding": "0"}),
}


class _ByteSink:
    """Write-only file object for PyAV: without ``seek`` it is non-seekable,
    so muxers write strictly forward and bytes can be drained as they come."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def write(self, data: bytes) -> int:
        self._buffer += data
        return len(data)

    def take(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


class StreamEncoder:
    """Encode one response: call :meth:`encode` per chunk, then :meth:`finish` once."""

    def __init__(self, fmt: SpeechFormat, input_rate: int) -> None:
        if fmt not in CONTENT_TYPES:
            raise ValueError(f"Unsupported speech format {fmt!r}.")
        if input_rate <= 0:
            raise ValueError(f"The input sample rate must be positive, not {input_rate}.")
        self.format: SpeechFormat = fmt
        self.content_type = CONTENT_TYPES[fmt]
        self._input_rate = input_rate
        self._input_time_base = Fraction(1, input_rate)
        self._samples_in = 0
        self._samples_out = 0
        self._finished = False
        self._sink = _ByteSink()
        self._container: av.container.OutputContainer | None = None
        self._stream: AudioStream | None = None
        if fmt in ("pcm", "wav"):
            # Swresample's float to int16 conversion clips, so loud input saturates.
            self._resampler = av.AudioResampler("s16", "mono", OUTPUT_SAMPLE_RATE)
            if fmt == "wav":
                self._sink.write(WAV_HEADER)
            return
        spec = _CODECS[fmt]
        container = av.open(
            self._sink, mode="w", format=spec.container, container_options=spec.container_options
        )
        stream = container.add_stream(spec.codec, rate=OUTPUT_SAMPLE_RATE)
        assert isinstance(stream, AudioStream)
        stream.layout = "mono"
        stream.format = spec.sample_format
        if spec.bit_rate is not None:
            stream.bit_rate = spec.bit_rate
        # Opens the codec, which fixes its frame size, and writes the header now,
        # so even a response with no audio at all is a well-formed file.
        container.start_encoding()
        self._container, self._stream = container, stream
        self._resampler = av.AudioResampler(
            spec.sample_format,
            "mono",
            OUTPUT_SAMPLE_RATE,
            frame_size=stream.codec_context.frame_size or None,
        )

    def encode(self, samples: npt.NDArray[np.float32]) -> bytes:
        """Encode mono float32 ``samples`` at the input rate; the bytes ready now."""
        if self._finished:
            raise RuntimeError("This encoder has already finished.")
        if samples.ndim != 1:
            raise ValueError(f"Expected mono samples (1-D), got shape {samples.shape}.")
        if samples.size:
            data = np.ascontiguousarray(samples, dtype=np.float32).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(data, format="flt", layout="mono")
            frame.sample_rate = self._input_rate
            frame.time_base = self._input_time_base
            frame.pts = self._samples_in
            self._samples_in += samples.size
            self._write(self._resampler.resample(frame))
        return self._sink.take()

    def finish(self) -> bytes:
        """Flush resampler, codec and muxer trailer; the last bytes of the file."""
        if self._finished:
            return b""
        self._finished = True
        self._write(self._resampler.resample(None))
        if self._container is not None and self._stream is not None:
            self._container.mux(self._stream.encode(None))
            self._container.close()
        return self._sink.take()

    def _write(self, frames: list[av.AudioFrame]) -> None:
        for frame in frames:
            if self._stream is None:
                self._sink.write(frame.to_ndarray().astype("<i2", copy=False).tobytes())
                continue
            # Count time in output samples, so timestamps never drift by rounding.
            frame.pts = self._samples_out
            frame.time_base = Fraction(1, OUTPUT_SAMPLE_RATE)
            self._samples_out += frame.samples
            assert self._container is not None
            self._container.mux(self._stream.encode(frame))


def encode_all(fmt: SpeechFormat, samples: npt.NDArray[np.float32], input_rate: int) -> bytes:
    """The whole file for ``samples``, for responses that are not streamed."""
    encoder = StreamEncoder(fmt, input_rate)
    return encoder.encode(samples) + encoder.finish()
