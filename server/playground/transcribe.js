// Transcription panel: a file (picked, dropped or recorded here) to
// POST v1/audio/transcriptions or v1/audio/translations, and the answer shown in the
// chosen response format; verbose_json segments seek the player when clicked.

import { api, messageOf } from './api.js';
import { $, clock, el, fillSelect, microphoneUnavailable, setStatus, showError } from './ui.js';

let chosen = null; // the File the next request sends
let fileURL = null; // its object URL, in #stt-audio
let recorder = null;

/** Transcription models (not speech ones) into #stt-model. */
export function setTranscriptionModels(models) {
  fillSelect($('stt-model'), models, 'whisper-1');
}

export function setupTranscribe() {
  const input = $('stt-file');
  input.addEventListener('change', () => {
    if (input.files?.length) choose(input.files[0], { fromInput: true });
  });
  setupDrop($('stt-drop'));
  $('stt-record').addEventListener('click', toggleRecording);
  for (const id of ['stt-format', 'stt-translate']) {
    $(id).addEventListener('change', syncOptions);
  }
  syncOptions();
  $('stt-form').addEventListener('submit', (event) => {
    event.preventDefault();
    transcribe();
  });
  const segments = $('stt-segments');
  segments.addEventListener('click', (event) => {
    const button = event.target.closest('button.segment');
    if (!button) return;
    const audio = $('stt-audio');
    audio.currentTime = Number(button.dataset.start);
    audio.play().catch(() => {});
  });
  $('stt-audio').addEventListener('timeupdate', markCurrentSegment);
}

/** Timestamps exist only in verbose_json; translations take neither them nor a language. */
function syncOptions() {
  const translate = $('stt-translate').checked;
  const verbose = $('stt-format').value === 'verbose_json';
  for (const id of ['stt-ts-segment', 'stt-ts-word']) $(id).disabled = !verbose || translate;
  $('stt-language').disabled = translate;
  $('stt-submit').textContent = translate ? 'Translate' : 'Transcribe';
}

function choose(file, { fromInput = false } = {}) {
  chosen = file;
  if (!fromInput) {
    // Mirror a dropped or recorded file into the input, so the page has one "chosen file".
    try {
      const transfer = new DataTransfer();
      transfer.items.add(file);
      $('stt-file').files = transfer.files;
    } catch {
      /* older browsers: `chosen` alone is enough */
    }
  }
  $('stt-file-name').textContent = `${file.name} (${formatSize(file.size)})`;
  if (fileURL) URL.revokeObjectURL(fileURL);
  fileURL = URL.createObjectURL(file);
  $('stt-audio').src = fileURL;
}

function formatSize(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} kB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

function setupDrop(zone) {
  zone.addEventListener('dragover', (event) => {
    event.preventDefault(); // without this the browser opens the file instead
    event.dataTransfer.dropEffect = 'copy';
    zone.classList.add('over');
  });
  zone.addEventListener('dragleave', (event) => {
    if (!zone.contains(event.relatedTarget)) zone.classList.remove('over');
  });
  zone.addEventListener('drop', (event) => {
    event.preventDefault();
    zone.classList.remove('over');
    const file = event.dataTransfer?.files?.[0];
    if (file) choose(file);
  });
}

// -- recording -------------------------------------------------------------------

async function toggleRecording() {
  if (recorder) {
    recorder.stop(); // the 'stop' handler makes the file
    return;
  }
  const button = $('stt-record');
  const status = $('stt-record-status');
  const error = $('stt-error');
  showError(error, '');
  if (!navigator.mediaDevices?.getUserMedia || !globalThis.MediaRecorder) {
    showError(error, microphoneUnavailable());
    return;
  }
  let stream;
  try {
    button.disabled = true; // until the browser has asked for the microphone
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (err) {
    showError(error, messageOf(err));
    return;
  } finally {
    button.disabled = false;
  }
  const preferred = 'audio/webm;codecs=opus';
  const options = MediaRecorder.isTypeSupported(preferred) ? { mimeType: preferred } : {};
  const current = new MediaRecorder(stream, options);
  const parts = [];
  const started = performance.now();
  const elapsed = () => Math.floor((performance.now() - started) / 1000);
  const timer = setInterval(() => {
    status.textContent = `Recording: ${elapsed()} s`;
  }, 250);
  current.addEventListener('dataavailable', (event) => {
    if (event.data.size) parts.push(event.data);
  });
  current.addEventListener('stop', () => {
    clearInterval(timer);
    for (const track of stream.getTracks()) track.stop();
    const type = current.mimeType || 'audio/webm';
    const ext = type.includes('mp4') ? 'mp4' : type.includes('ogg') ? 'ogg' : 'webm';
    status.textContent = `Recorded ${elapsed()} s`;
    button.textContent = 'Record';
    button.setAttribute('aria-pressed', 'false');
    recorder = null;
    choose(new File(parts, `recording.${ext}`, { type }));
  });
  recorder = current;
  current.start(250);
  status.textContent = 'Recording: 0 s';
  button.textContent = 'Stop';
  button.setAttribute('aria-pressed', 'true');
}

// -- the request -----------------------------------------------------------------

async function transcribe() {
  const button = $('stt-submit');
  if (button.disabled) return;
  const status = $('stt-status');
  const error = $('stt-error');
  showError(error, '');
  if (!chosen) {
    showError(error, 'Choose an audio file first: pick one, drop one here, or record one.');
    setStatus(status, 'error', 'No file');
    return;
  }
  const format = $('stt-format').value;
  const translate = $('stt-translate').checked;
  const form = new FormData();
  form.append('file', chosen, chosen.name);
  form.append('model', $('stt-model').value);
  form.append('response_format', format);
  if (!translate) {
    const language = $('stt-language').value.trim();
    if (language) form.append('language', language);
    if (format === 'verbose_json') {
      if ($('stt-ts-segment').checked) form.append('timestamp_granularities[]', 'segment');
      if ($('stt-ts-word').checked) form.append('timestamp_granularities[]', 'word');
    }
  }
  button.disabled = true;
  setStatus(status, 'working', translate ? 'Translating…' : 'Transcribing…');
  clearResult();
  const started = performance.now();
  try {
    const path = translate ? 'v1/audio/translations' : 'v1/audio/transcriptions';
    const response = await api(path, { method: 'POST', body: form });
    const seconds = ((performance.now() - started) / 1000).toFixed(2);
    if (format === 'json' || format === 'verbose_json') {
      showJSON(await response.json(), seconds);
    } else {
      $('stt-text').append(el('pre', {}, await response.text()));
      $('stt-meta').textContent = `Answered in ${seconds} s`;
    }
    setStatus(status, 'done', 'Done');
  } catch (err) {
    showError(error, messageOf(err));
    setStatus(status, 'error', 'Failed');
  } finally {
    button.disabled = false;
  }
}

function clearResult() {
  $('stt-text').replaceChildren();
  $('stt-segments').replaceChildren();
  $('stt-meta').textContent = '';
}

function showJSON(body, seconds) {
  $('stt-text').append(el('p', {}, body.text ?? ''));
  const facts = [];
  if (body.language) facts.push(body.language);
  if (typeof body.duration === 'number') facts.push(`${body.duration.toFixed(1)} s of audio`);
  facts.push(`answered in ${seconds} s`);
  $('stt-meta').textContent = facts.join(' · ');
  const words = body.words ?? [];
  const segments = body.segments ?? [];
  const list = $('stt-segments');
  // Each word goes under the last segment that starts at or before it: word and segment
  // times are rounded separately, so "start < segment end" would drop the odd word.
  const owner = (word) => segments.findLastIndex((s) => s.start <= word.start);
  segments.forEach((segment, index) => {
    const button = el(
      'button',
      { type: 'button', class: 'segment', 'data-start': segment.start, 'data-end': segment.end },
      `[${clock(segment.start)} -> ${clock(segment.end)}] ${segment.text.trim()}`,
    );
    const item = el('li', {}, button);
    const own = words.filter((w) => Math.max(owner(w), 0) === index);
    if (own.length) item.append(wordLine(own));
    list.append(item);
  });
  if (!segments.length && words.length) list.append(el('li', {}, wordLine(words)));
}

function wordLine(words) {
  const line = el('p', { class: 'words' });
  for (const word of words) {
    line.append(el('span', { title: `${clock(word.start)} - ${clock(word.end)}` }, word.word), ' ');
  }
  return line;
}

/** Highlight the segment the player is in, so a long transcript can be followed. */
function markCurrentSegment() {
  const time = $('stt-audio').currentTime;
  for (const button of $('stt-segments').querySelectorAll('button.segment')) {
    const inside = time >= Number(button.dataset.start) && time < Number(button.dataset.end);
    button.classList.toggle('current', inside);
  }
}
