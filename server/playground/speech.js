// Speech panel: POST v1/audio/speech and play the audio while the body still streams.
//
// The server sends a sentence's audio as soon as it is synthesized, so the first
// sentence can play while later ones are still being made. How it is played while
// streaming depends on the format: mp3 and aac through Media Source Extensions, raw
// pcm through Web Audio buffers scheduled back to back; formats a browser cannot
// append piecewise (ogg/opus, flac, wav) play once complete. Whatever the path, the
// visible <audio> gets the whole clip at the end, to replay, seek and download.

import { ApiError, api, messageOf } from './api.js';
import { $, fillSelect, setStatus, showError } from './ui.js';

const PCM_RATE = 24000; // the server's pcm: 16-bit signed little-endian mono at 24 kHz
const MSE_TYPES = { mp3: 'audio/mpeg', aac: 'audio/aac' };
const BLOB_TYPES = {
  mp3: 'audio/mpeg',
  opus: 'audio/ogg',
  aac: 'audio/aac',
  flac: 'audio/flac',
  wav: 'audio/wav',
  pcm: 'audio/wav', // wrapped in a WAV header for the <audio> element
};
const BASE_MODELS = ['tts-1', 'tts-1-hd'];
// Until the server's list arrives (or when it needs a key first): OpenAI's voices,
// which every preset speech model of voxserve speaks.
const FALLBACK_VOICES = ['alloy', 'ash', 'ballad', 'coral', 'echo', 'fable', 'nova', 'onyx',
  'sage', 'shimmer', 'verse', 'marin', 'cedar'];
const METADATA_WAIT_MS = 3000;

let voicesByModel = new Map();
let flatVoices = FALLBACK_VOICES;
let streaming = null; // the player of the latest request, while it may still sound
let resultURL = null; // the blob URL the <audio> element and the download link share
let audioContext = null;

/** Fill the model and voice menus from GET v1/audio/voices (or null: keep the defaults). */
export function setSpeechCatalog(voiceList) {
  if (voiceList) {
    voicesByModel = new Map(
      (voiceList.data ?? []).map((group) => [group.model, group.voices.map((v) => v.id)]),
    );
    const flat = (voiceList.voices ?? []).map((v) => v.id);
    flatVoices = flat.length ? flat : FALLBACK_VOICES;
  }
  const models = [...new Set([...BASE_MODELS, ...voicesByModel.keys()])];
  fillSelect($('speech-model'), models, 'tts-1');
  fillVoices();
}

function fillVoices() {
  const voices = voicesByModel.get($('speech-model').value) ?? flatVoices;
  fillSelect($('speech-voice'), voices, 'alloy');
}

export function setupSpeech() {
  $('speech-model').addEventListener('change', fillVoices);
  $('speech-form').addEventListener('submit', (event) => {
    event.preventDefault();
    speak();
  });
  // Replaying the finished clip silences what may still be playing from the stream.
  $('speech-audio').addEventListener('play', () => {
    streaming?.stop();
    streaming = null;
  });
}

async function speak() {
  const button = $('speech-submit');
  if (button.disabled) return;
  const format = $('speech-format').value;
  const request = {
    model: $('speech-model').value,
    voice: $('speech-voice').value,
    input: $('speech-text').value,
    response_format: format,
    speed: Number($('speech-speed').value),
  };
  const status = $('speech-status');
  const error = $('speech-error');
  const ttfa = $('speech-ttfa');
  const download = $('speech-download');

  button.disabled = true;
  showError(error, '');
  setStatus(status, 'working', 'Synthesizing…');
  ttfa.textContent = '';
  delete ttfa.dataset.ms;
  download.hidden = true;
  streaming?.stop();
  // Made now, inside the click: browsers let audio start only from a user gesture.
  const player = makePlayer(format);
  streaming = player;
  const started = performance.now();
  let receiving = false;
  try {
    const response = await api('v1/audio/speech', { method: 'POST', json: request });
    receiving = true;
    const chunks = [];
    const reader = response.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (!value?.length) continue;
      chunks.push(value);
      player?.push(value);
      if (chunks.length === 1) {
        const ms = Math.round(performance.now() - started);
        ttfa.dataset.ms = String(ms);
        ttfa.textContent = `First audio after ${ms} ms`;
      }
    }
    player?.end();
    await showResult(concat(chunks), format, !player);
    setStatus(status, 'done', describeDone($('speech-audio').duration));
  } catch (err) {
    player?.stop();
    let message = messageOf(err);
    if (receiving && !(err instanceof ApiError)) {
      // The status line was 200 and the body broke off: the server stops a stream it
      // cannot finish rather than end it early, so that a short file never looks whole.
      message = 'The audio stream broke off before the end, so the audio is incomplete. ' +
        'The server log says why.';
    }
    showError(error, message);
    setStatus(status, 'error', 'Failed');
  } finally {
    button.disabled = false;
  }
}

function describeDone(duration) {
  return Number.isFinite(duration) ? `Done: ${duration.toFixed(1)} s of audio` : 'Done';
}

/** The whole clip into the visible <audio> and the download link. */
async function showResult(bytes, format, playNow) {
  const audio = $('speech-audio');
  const download = $('speech-download');
  let playable = bytes;
  if (format === 'pcm') playable = wavOf(bytes);
  else if (format === 'wav') playable = fixWavSizes(bytes);
  else if (format === 'flac') playable = await fixFlacLength(bytes);
  if (resultURL) URL.revokeObjectURL(resultURL);
  resultURL = URL.createObjectURL(new Blob([playable], { type: BLOB_TYPES[format] }));
  // The download is what the API returned (raw pcm stays raw), under a name that says so.
  const downloadURL =
    format === 'pcm' ? URL.createObjectURL(new Blob([bytes], { type: 'audio/pcm' })) : resultURL;
  if (download.href.startsWith('blob:') && download.href !== resultURL) {
    URL.revokeObjectURL(download.href);
  }
  download.href = downloadURL;
  download.download = `speech.${format}`;
  download.textContent = `Download speech.${format}`;
  download.hidden = false;

  const loaded = metadataLoaded(audio);
  audio.src = resultURL;
  await loaded; // "done" then means: the duration is known and the clip can be replayed
  if (playNow) audio.play().catch(() => {}); // blocked autoplay: the controls are there
}

function metadataLoaded(audio) {
  return new Promise((resolve) => {
    const finish = () => {
      clearTimeout(timer);
      audio.removeEventListener('loadedmetadata', finish);
      audio.removeEventListener('error', finish);
      resolve();
    };
    const timer = setTimeout(finish, METADATA_WAIT_MS);
    audio.addEventListener('loadedmetadata', finish);
    audio.addEventListener('error', finish);
  });
}

/** A player that sounds while the body streams, or null where the format cannot. */
function makePlayer(format) {
  if (format === 'pcm') {
    audioContext ??= new AudioContext({ sampleRate: PCM_RATE });
    audioContext.resume().catch(() => {});
    return new PcmPlayer(audioContext);
  }
  const type = MSE_TYPES[format];
  if (type && globalThis.MediaSource?.isTypeSupported(type)) return new SourcePlayer(type);
  return null;
}

/** mp3/aac through Media Source Extensions, on an <audio> of its own outside the page. */
class SourcePlayer {
  #audio = new Audio();
  #source = new MediaSource();
  #url = URL.createObjectURL(this.#source);
  #buffer = null;
  #pending = [];
  #ended = false;
  #playing = false;

  constructor(type) {
    this.#source.addEventListener(
      'sourceopen',
      () => {
        // A request that failed (or a new Speak) may have stopped us before this fired.
        if (this.#source.readyState !== 'open') return;
        this.#buffer = this.#source.addSourceBuffer(type);
        this.#buffer.addEventListener('updateend', () => this.#pump());
        this.#pump();
      },
      { once: true },
    );
    this.#audio.addEventListener('ended', () => this.stop());
    this.#audio.src = this.#url;
  }

  push(bytes) {
    this.#pending.push(bytes);
    this.#pump();
    if (!this.#playing) {
      this.#playing = true;
      this.#audio.play().catch(() => {}); // starts as soon as the first frames are in
    }
  }

  end() {
    this.#ended = true;
    this.#pump();
  }

  // appendBuffer takes one chunk at a time: the next goes in at 'updateend'.
  #pump() {
    const buffer = this.#buffer;
    if (!buffer || buffer.updating || this.#source.readyState !== 'open') return;
    if (this.#pending.length) buffer.appendBuffer(this.#pending.shift());
    else if (this.#ended) this.#source.endOfStream();
  }

  stop() {
    this.#audio.pause();
    this.#audio.removeAttribute('src');
    this.#audio.load();
    URL.revokeObjectURL(this.#url);
  }
}

/** Raw pcm through Web Audio: each chunk becomes a buffer that starts where the last ends. */
class PcmPlayer {
  #context;
  #next = 0;
  #carry = null; // a chunk may end between the two bytes of a sample
  #sources = new Set();

  constructor(context) {
    this.#context = context;
  }

  push(bytes) {
    let data = bytes;
    if (this.#carry) {
      data = concat([this.#carry, bytes]);
      this.#carry = null;
    }
    const usable = data.length - (data.length % 2);
    if (usable < data.length) this.#carry = data.slice(usable);
    const samples = usable / 2;
    if (!samples) return;
    const view = new DataView(data.buffer, data.byteOffset, usable);
    const buffer = this.#context.createBuffer(1, samples, PCM_RATE);
    const channel = buffer.getChannelData(0);
    for (let i = 0; i < samples; i++) channel[i] = view.getInt16(i * 2, true) / 32768;
    const source = this.#context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.#context.destination);
    // A little lead on the first buffer (and after an underrun) avoids a clipped start.
    const at = Math.max(this.#next, this.#context.currentTime + 0.05);
    source.start(at);
    this.#next = at + buffer.duration;
    this.#sources.add(source);
    source.addEventListener('ended', () => this.#sources.delete(source));
  }

  end() {}

  stop() {
    for (const source of this.#sources) source.stop();
    this.#sources.clear();
  }
}

function concat(chunks) {
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.length;
  }
  return out;
}

/** 24 kHz mono 16-bit pcm with a 44-byte WAV header in front. */
function wavOf(pcm) {
  const out = new Uint8Array(44 + pcm.length);
  const view = new DataView(out.buffer);
  const text = (offset, s) => [...s].forEach((c, i) => view.setUint8(offset + i, c.charCodeAt(0)));
  text(0, 'RIFF');
  view.setUint32(4, 36 + pcm.length, true);
  text(8, 'WAVE');
  text(12, 'fmt ');
  view.setUint32(16, 16, true); // fmt chunk size
  view.setUint16(20, 1, true); // PCM
  view.setUint16(22, 1, true); // mono
  view.setUint32(24, PCM_RATE, true);
  view.setUint32(28, PCM_RATE * 2, true); // bytes per second
  view.setUint16(32, 2, true); // bytes per frame
  view.setUint16(34, 16, true); // bits per sample
  text(36, 'data');
  view.setUint32(40, pcm.length, true);
  out.set(pcm, 44);
  return out;
}

/**
 * A streamed WAV cannot go back to write its length, so its header says "as long as
 * possible" (as OpenAI's and ffmpeg's do); players would then show a duration of
 * hours. Now that the whole file is here, write the real sizes.
 */
function fixWavSizes(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const tag = (offset) => String.fromCharCode(...bytes.subarray(offset, offset + 4));
  if (bytes.length < 12 || tag(0) !== 'RIFF' || tag(8) !== 'WAVE') return bytes;
  view.setUint32(4, bytes.length - 8, true);
  for (let pos = 12; pos + 8 <= bytes.length; ) {
    const size = view.getUint32(pos + 4, true);
    if (tag(pos) === 'data') {
      view.setUint32(pos + 4, bytes.length - pos - 8, true);
      break;
    }
    pos += 8 + size + (size % 2);
  }
  return bytes;
}

/**
 * The same for FLAC: a streamed file's STREAMINFO says "total samples unknown" (0), and
 * browsers then report an endless duration. Decode the whole file once to count its
 * samples (at its own rate, so nothing is resampled) and write the count in.
 */
async function fixFlacLength(bytes) {
  const tag = String.fromCharCode(...bytes.subarray(0, 4));
  if (bytes.length < 42 || tag !== 'fLaC' || (bytes[4] & 0x7f) !== 0) return bytes;
  const info = 8; // STREAMINFO's body, after the marker and the block header
  const rate = (bytes[info + 10] << 12) | (bytes[info + 11] << 4) | (bytes[info + 12] >> 4);
  try {
    const decoded = await new OfflineAudioContext(1, 1, rate).decodeAudioData(bytes.slice().buffer);
    const total = decoded.length; // 36 bits: the low nibble of byte 13, then bytes 14-17
    bytes[info + 13] = (bytes[info + 13] & 0xf0) | (Math.floor(total / 2 ** 32) & 0x0f);
    new DataView(bytes.buffer, bytes.byteOffset).setUint32(info + 14, total >>> 0);
  } catch {
    /* not decodable here: the file is still whole, only its length stays unknown */
  }
  return bytes;
}
