"""Log-mel features for Whisper, computed with torch on the engine's device.

The recipe is faster-whisper's, step for step, so that the torch engine and the
CTranslate2 engine see the same numbers for the same window and write the same
text: pad the audio with 160 zeros, take a centred, reflect-padded STFT
(400-point periodic Hann window, hop 160), drop the last frame, project the power
spectrum onto Slaney mel filters, take ``log10`` (floored at 1e-10), clamp to
8 below the window's maximum, scale as ``(x + 4) / 4``, drop the last frame again,
and pad with zeros (not with silence's log-mel) or trim to 3000 frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np
import numpy.typing as npt
import torch

from models.base import SAMPLE_RATE
from models.whisper_decoding import HOP_LENGTH

N_FFT = 400
N_FRAMES = 3000
"""Mel frames in one 30-second window, the encoder's fixed input."""


@cache
def mel_filters(n_mels: int) -> npt.NDArray[np.float32]:
    """Slaney-style mel filterbank ``(n_mels, N_FFT // 2 + 1)``, as librosa builds it."""
    fft_freqs = np.fft.rfftfreq(n=N_FFT, d=1.0 / SAMPLE_RATE)
    linear_step = 200.0 / 3  # Hz per mel below 1 kHz
    log_start_hz = 1000.0
    log_start_mel = log_start_hz / linear_step
    log_step = np.log(6.4) / 27.0
    top_mel = log_start_mel + np.log(SAMPLE_RATE / 2 / log_start_hz) / log_step
    mels = np.linspace(0.0, top_mel, n_mels + 2)
    freqs = linear_step * mels
    high = mels >= log_start_mel
    freqs[high] = log_start_hz * np.exp(log_step * (mels[high] - log_start_mel))
    widths = np.diff(freqs)
    ramps = freqs[:, None] - fft_freqs[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (freqs[2 : n_mels + 2] - freqs[:n_mels]))[:, None]
    return weights.astype(np.float32)


class FeatureExtractor:
    """Turns windows of 16 kHz audio into the encoder's input on one device."""

    def __init__(self, n_mels: int, device: torch.device) -> None:
        self.device = device
        self.filters = torch.from_numpy(mel_filters(n_mels)).to(device)
        self.window = torch.hann_window(N_FFT, periodic=True, device=device)

    def __call__(self, windows: Sequence[npt.NDArray[np.float32]]) -> torch.Tensor:
        """``(len(windows), n_mels, 3000)`` float32 features."""
        out = torch.zeros(
            (len(windows), self.filters.shape[0], N_FRAMES), dtype=torch.float32, device=self.device
        )
        for row, audio in enumerate(windows):
            features = self._log_mel(torch.from_numpy(np.ascontiguousarray(audio)).to(self.device))
            frames = min(features.shape[-1], N_FRAMES)
            out[row, :, :frames] = features[:, :frames]
        return out

    def _log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        # a centred STFT reflects N_FFT // 2 samples at each end: that many must exist
        shortfall = max(0, N_FFT // 2 + 1 - len(audio) - HOP_LENGTH)
        audio = torch.nn.functional.pad(audio.float(), (0, HOP_LENGTH + shortfall))
        spectrum = torch.stft(
            audio,
            N_FFT,
            HOP_LENGTH,
            window=self.window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )
        power = spectrum[..., :-1].abs() ** 2
        log_spec = torch.clamp(self.filters @ power, min=1e-10).log10()
        log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
        return ((log_spec + 4.0) / 4.0)[..., :-1]
