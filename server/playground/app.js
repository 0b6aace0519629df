// The playground's entry point: tabs, the API key, and the model lists every panel uses.

import { api, getKey, keyChanged, setKey } from './api.js';
import { setupLive, setLiveModels } from './live.js';
import { serverPanelShown, setupServer } from './server.js';
import { setSpeechCatalog, setupSpeech } from './speech.js';
import { setTranscriptionModels, setupTranscribe } from './transcribe.js';
import { $ } from './ui.js';

const TABS = ['speech', 'transcribe', 'live', 'server'];
const KEY_SETTLE_MS = 400; // re-probe once typing pauses, not on every keystroke

// -- tabs: the WAI-ARIA tabs pattern, with automatic activation -------------------

function selectTab(name, { focus = false } = {}) {
  if (!TABS.includes(name)) name = TABS[0];
  for (const tab of TABS) {
    const selected = tab === name;
    const button = $(`tab-${tab}`);
    button.setAttribute('aria-selected', String(selected));
    button.tabIndex = selected ? 0 : -1;
    $(`panel-${tab}`).hidden = !selected;
  }
  if (focus) $(`tab-${name}`).focus();
  // replaceState: switching tabs should not fill the back button's history.
  if (location.hash !== `#${name}`) history.replaceState(null, '', `#${name}`);
  serverPanelShown(name === 'server');
}

function setupTabs() {
  const list = document.querySelector('[role="tablist"]');
  list.addEventListener('click', (event) => {
    const tab = event.target.closest('[role="tab"]');
    if (tab) selectTab(tab.id.slice('tab-'.length));
  });
  list.addEventListener('keydown', (event) => {
    const current = TABS.indexOf(document.activeElement?.id?.slice('tab-'.length));
    if (current < 0) return;
    const moves = {
      ArrowLeft: (current - 1 + TABS.length) % TABS.length,
      ArrowRight: (current + 1) % TABS.length,
      Home: 0,
      End: TABS.length - 1,
    };
    if (!(event.key in moves)) return;
    event.preventDefault();
    selectTab(TABS[moves[event.key]], { focus: true });
  });
  addEventListener('hashchange', () => selectTab(location.hash.slice(1)));
  selectTab(location.hash.slice(1));
}

// -- the key and the catalog -------------------------------------------------------

/**
 * Probe GET v1/models (which also tells #key-status whether a key is needed or taken),
 * then the voices; fill every model and voice menu from them. A failure leaves the
 * defaults in place: the panels still work, and show the API's error when used.
 */
async function loadCatalog() {
  let models = null;
  let voices = null;
  let speechModels = new Set();
  try {
    models = (await (await api('v1/models')).json()).data.map((m) => m.id);
    voices = await (await api('v1/audio/voices')).json();
    speechModels = new Set((voices.data ?? []).map((group) => group.model));
    // Speech aliases (gpt-4o-mini-tts) are not in the voice list; this list has them.
    const audioModels = await (await api('v1/audio/models')).json();
    for (const model of audioModels.data ?? []) speechModels.add(model.id);
  } catch {
    /* 401 or unreachable: #key-status and the defaults say enough until a panel is used */
  }
  setSpeechCatalog(voices);
  const transcription = (models ?? ['whisper-1']).filter(
    (id) => !speechModels.has(id) && !id.startsWith('tts-'),
  );
  setTranscriptionModels(transcription);
  setLiveModels(transcription);
}

function setupKey() {
  const input = $('api-key');
  input.value = getKey();
  keyChanged();
  let settle = null;
  const store = (delay) => {
    setKey(input.value.trim());
    keyChanged();
    clearTimeout(settle);
    settle = setTimeout(loadCatalog, delay);
  };
  input.addEventListener('input', () => store(KEY_SETTLE_MS));
  input.addEventListener('change', () => store(0));
  // Enter in the key field applies it at once (and never submits anything anywhere).
  $('key-form').addEventListener('submit', (event) => {
    event.preventDefault();
    store(0);
  });
}

setupKey();
setupSpeech();
setupTranscribe();
setupLive();
setupServer();
setupTabs();
loadCatalog();
