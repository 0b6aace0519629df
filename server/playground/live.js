// Live panel: the microphone streamed to the realtime WebSocket (OpenAI's Realtime API
// for transcription sessions), each utterance shown as it is transcribed.
//
// Browsers cannot set headers on a WebSocket, so the key travels as the subprotocol
// `openai-insecure-api-key.<key>` beside `realtime`, as OpenAI's browser clients do.

import { api, getKey, messageOf, wsURL } from './api.js';
import { $, el, fillSelect, microphoneUnavailable, setStatus, showError } from './ui.js';

const RATE = 24000; // pcm16 at 24 kHz: the session's default input format
const CHUNK_MS = 100;
const KEY_SUBPROTOCOL = 'openai-insecure-api-key.';
const WORKLET_URL = new URL('pcm-worklet.js', import.meta.url);

let session = null; // the LiveSession running, or null

export function setLiveModels(models) {
  fillSelect($('live-model'), models, 'whisper-1');
}

export function setupLive() {
  // The button stays enabled throughout: it is also the way to stop.
  $('live-start').addEventListener('click', () => {
    if (session) session.stop();
    else start();
  });
}

function start() {
  showError($('live-error'), '');
  if (!navigator.mediaDevices?.getUserMedia || !globalThis.AudioWorkletNode) {
    showError($('live-error'), microphoneUnavailable());
    setStatus($('live-status'), 'error', 'Unavailable');
    return;
  }
  const language = $('live-language').value.trim();
  session = new LiveSession($('live-model').value, language || null);
  setButton(true);
  setStatus($('live-status'), 'connecting', 'Connecting…');
  session.open();
}

function setButton(running) {
  const button = $('live-start');
  button.textContent = running ? 'Stop' : 'Start';
  button.setAttribute('aria-pressed', String(running));
}

class LiveSession {
  #model;
  #language;
  #stream = null;
  #context = null;
  #node = null;
  #socket = null;
  #configured = false; // session.update sent: audio from now on is transcribed
  #listening = false; // session.updated received
  #over = false;
  #lastServerError = '';

  constructor(model, language) {
    this.#model = model;
    this.#language = language;
  }

  async open() {
    try {
      // A refused handshake reaches a browser only as "closed (1006)"; asking an
      // ordinary endpoint first turns a missing or wrong key into a readable message.
      await api('v1/models');
      if (this.#over) return;
      this.#stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1 } });
      if (this.#over) return this.#release();
      await this.#startAudio();
      if (this.#over) return this.#release();
      this.#connect();
    } catch (err) {
      if (!this.#over) this.#fail(messageOf(err));
    }
  }

  async #startAudio() {
    let context = new AudioContext({ sampleRate: RATE });
    let source;
    try {
      source = context.createMediaStreamSource(this.#stream);
    } catch {
      // Firefox will not connect a microphone to a context at another rate: take the
      // device's rate, and let the worklet resample.
      await context.close();
      context = new AudioContext();
      source = context.createMediaStreamSource(this.#stream);
    }
    this.#context = context;
    await context.audioWorklet.addModule(WORKLET_URL);
    // No outputs: a node without outputs is still processed, and nothing is played back.
    const node = new AudioWorkletNode(context, 'pcm-capture', {
      numberOfInputs: 1,
      numberOfOutputs: 0,
      channelCount: 1,
      channelCountMode: 'explicit',
      processorOptions: { targetRate: RATE, chunkMs: CHUNK_MS },
    });
    node.port.addEventListener('message', (event) => this.#audio(event.data));
    node.port.start();
    source.connect(node);
    this.#node = node;
    await context.resume();
  }

  #connect() {
    const protocols = ['realtime'];
    const key = getKey();
    if (key) protocols.push(KEY_SUBPROTOCOL + key);
    let socket;
    try {
      socket = new WebSocket(wsURL('v1/realtime?intent=transcription'), protocols);
    } catch {
      this.#fail(
        'The API key holds characters a browser cannot send as a WebSocket subprotocol; ' +
          'use a key of letters, digits and - . _ ~ only.',
      );
      return;
    }
    this.#socket = socket;
    socket.addEventListener('message', (event) => this.#event(event.data));
    socket.addEventListener('close', (event) => this.#closed(event));
  }

  /** One chunk from the worklet: the meter, and the audio to the server. */
  #audio({ pcm, level }) {
    $('live-level').value = level;
    const socket = this.#socket;
    if (!this.#configured || socket?.readyState !== WebSocket.OPEN) return;
    socket.send(JSON.stringify({ type: 'input_audio_buffer.append', audio: base64(pcm) }));
  }

  #send(event) {
    this.#socket.send(JSON.stringify(event));
  }

  #event(data) {
    let event;
    try {
      event = JSON.parse(data);
    } catch {
      return; // not ours to interpret
    }
    switch (event.type) {
      case 'session.created':
      case 'transcription_session.created':
        this.#configure();
        break;
      case 'session.updated':
      case 'transcription_session.updated':
        this.#listening = true;
        setStatus($('live-status'), 'listening', 'Listening');
        break;
      case 'input_audio_buffer.speech_started':
        utterance(event.item_id).classList.add('speaking');
        break;
      case 'input_audio_buffer.committed':
        utterance(event.item_id).classList.remove('speaking');
        break;
      case 'conversation.item.input_audio_transcription.delta':
        utterance(event.item_id).append(event.delta ?? '');
        break;
      case 'conversation.item.input_audio_transcription.completed': {
        const p = utterance(event.item_id);
        p.textContent = event.transcript ?? '';
        p.classList.remove('speaking');
        p.classList.add('done');
        break;
      }
      case 'conversation.item.input_audio_transcription.failed': {
        const p = utterance(event.item_id);
        p.textContent = event.error?.message ?? 'Transcription failed.';
        p.classList.remove('speaking');
        p.classList.add('failed');
        break;
      }
      case 'error': {
        const message = event.error?.message ?? 'The server reported an error.';
        this.#lastServerError = message;
        // Before the session is set up, an error means it cannot be (a model it does
        // not have, a language it does not know): stop rather than listen in vain.
        if (!this.#listening) this.#fail(message);
        else showError($('live-error'), message);
        break;
      }
      default:
        break;
    }
  }

  #configure() {
    const transcription = { model: this.#model };
    if (this.#language) transcription.language = this.#language;
    this.#send({
      type: 'session.update',
      session: {
        type: 'transcription',
        audio: {
          input: {
            format: { type: 'audio/pcm', rate: RATE },
            transcription,
            turn_detection: { type: 'server_vad' },
          },
        },
      },
    });
    this.#configured = true; // events are handled in order: the audio after this uses it
  }

  #closed(event) {
    if (this.#over) return;
    this.#end();
    if (event.code === 1006 && !this.#configured) {
      showError(
        $('live-error'),
        'Could not open the realtime connection: the server refused it (a key it does not ' +
          'accept, too many sessions open, or a server draining) or could not be reached.',
      );
      setStatus($('live-status'), 'error', 'Failed');
      return;
    }
    const why = event.reason || `code ${event.code}`;
    const closing = `The server closed the session (${why}).`;
    showError($('live-error'), [this.#lastServerError, closing].filter(Boolean).join(' '));
    setStatus($('live-status'), 'idle', 'Idle');
  }

  /** The user's Stop: release the microphone and close normally. */
  stop() {
    if (this.#over) return;
    this.#end();
    this.#socket?.close(1000, 'client stopped');
    setStatus($('live-status'), 'idle', 'Idle');
  }

  #fail(message) {
    this.#end();
    this.#socket?.close(1000);
    showError($('live-error'), message);
    setStatus($('live-status'), 'error', 'Failed');
  }

  /** Every way a session ends: no more events handled, the microphone freed, Start shown. */
  #end() {
    this.#over = true;
    this.#release();
    session = null;
    setButton(false);
  }

  #release() {
    for (const track of this.#stream?.getTracks() ?? []) track.stop();
    this.#node?.port.close();
    this.#node?.disconnect();
    this.#context?.close().catch(() => {});
    this.#stream = this.#context = this.#node = null;
    $('live-level').value = 0;
  }
}

/** The paragraph of one utterance, made on first mention and kept in view. */
function utterance(itemId) {
  const transcript = $('live-transcript');
  const found = [...transcript.children].find((p) => p.dataset.itemId === itemId);
  if (found) return found;
  const p = el('p', { class: 'utterance', 'data-item-id': itemId ?? '' });
  transcript.append(p);
  p.scrollIntoView({ block: 'nearest' });
  return p;
}

function base64(buffer) {
  const bytes = new Uint8Array(buffer);
  let text = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(text);
}
