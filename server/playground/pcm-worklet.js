// AudioWorklet processor: microphone samples in, 24 kHz 16-bit little-endian pcm out,
// in chunks of `chunkMs` (with the chunk's level, for the meter).
//
// The page asks for an AudioContext at 24 kHz, and most browsers resample the
// microphone to it; where one cannot (Firefox refuses to mix rates), the context runs
// at the device's rate and the linear resampler below brings it to 24 kHz.

class PcmCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { targetRate = 24000, chunkMs = 100 } = options.processorOptions ?? {};
    this.step = sampleRate / targetRate; // input samples per output sample
    this.position = 0; // where the next output sample falls, in input samples
    this.previous = 0; // the last input sample of the previous block, to interpolate from
    this.size = Math.round((targetRate * chunkMs) / 1000);
    this.#fresh();
  }

  #fresh() {
    this.chunk = new ArrayBuffer(this.size * 2);
    this.view = new DataView(this.chunk);
    this.filled = 0;
    this.squares = 0;
  }

  #emit(sample) {
    const s = Math.max(-1, Math.min(1, sample));
    this.view.setInt16(this.filled * 2, s < 0 ? s * 0x8000 : s * 0x7fff, true);
    this.squares += s * s;
    this.filled += 1;
    if (this.filled === this.size) {
      const rms = Math.sqrt(this.squares / this.size);
      // The meter shows -60..0 dBFS as 0..1: speech sits around the middle.
      const level = rms > 0 ? Math.min(1, Math.max(0, (20 * Math.log10(rms) + 60) / 60)) : 0;
      this.port.postMessage({ pcm: this.chunk, level }, [this.chunk]);
      this.#fresh();
    }
  }

  process(inputs) {
    const channel = inputs[0]?.[0];
    if (!channel) return true; // no input connected yet: stay alive
    if (this.step === 1) {
      for (let i = 0; i < channel.length; i++) this.#emit(channel[i]);
      return true;
    }
    // Linear interpolation between input samples; index -1 is the previous block's last.
    while (this.position < channel.length - 1) {
      const i = Math.floor(this.position);
      const frac = this.position - i;
      const a = i < 0 ? this.previous : channel[i];
      this.#emit(a + (channel[i + 1] - a) * frac);
      this.position += this.step;
    }
    this.position -= channel.length;
    this.previous = channel[channel.length - 1];
    return true;
  }
}

registerProcessor('pcm-capture', PcmCapture);
