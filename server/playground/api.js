// The one place the page talks HTTP to voxserve: URLs, the API key, error envelopes.
//
// Every URL is built relative to the page (document.baseURI), never from "/", so the
// playground keeps working behind a reverse proxy that mounts voxserve under a prefix.

const KEY_STORAGE = 'voxserve.apiKey';

/** An API answer that was not 2xx (or no answer at all), with the message to show. */
export class ApiError extends Error {
  constructor(message, { status = 0, code = null } = {}) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }
}

export const apiURL = (path) => new URL(path, document.baseURI);

/** The WebSocket URL for a path, on the page's own host (wss: under https:). */
export function wsURL(path) {
  const url = apiURL(path);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  return url.href;
}

// The key lives in sessionStorage only: it ends with the tab, is not shared with other
// tabs or sent as a cookie, and is never written to localStorage.
export function getKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE) ?? '';
  } catch {
    return ''; // storage disabled: the key input still works for this page view
  }
}

export function setKey(key) {
  try {
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
  } catch {
    /* storage disabled: nothing to remember */
  }
}

// #key-status tells whether the server wants a key and whether ours was taken.
const keyStatus = () => document.getElementById('key-status');

function showKeyStatus(state, text) {
  const el = keyStatus();
  if (!el) return;
  el.dataset.state = state;
  el.textContent = text;
}

/** The resting text for the key status: before any call has said more. */
export function keyChanged() {
  showKeyStatus(getKey() ? 'unknown' : 'none', getKey() ? 'Key set' : 'No key set');
}

function noteAnswer(status, sentKey) {
  if (status === 401) {
    showKeyStatus(
      'needed',
      sentKey ? 'The API key was refused' : 'This server needs an API key',
    );
  } else if (status >= 200 && status < 300) {
    if (sentKey) showKeyStatus('ok', 'Key accepted');
    else showKeyStatus('open', 'No key set (this server accepts requests without one)');
  }
}

/** The message an error answer carries: OpenAI's envelope, else the HTTP status. */
async function errorOf(response) {
  let message = '';
  let code = null;
  try {
    const body = await response.json();
    message = body?.error?.message ?? '';
    code = body?.error?.code ?? null;
  } catch {
    /* not JSON: a proxy's HTML page, say */
  }
  if (!message) {
    message = `${response.status} ${response.statusText || 'error'}`.trim();
  }
  return new ApiError(message, { status: response.status, code });
}

export const NETWORK_MESSAGE =
  'Could not reach the server (network error). Is voxserve running, and reachable from this page?';

/**
 * fetch() a v1 path with the key, and resolve to the Response only when it is 2xx.
 * Anything else rejects with an ApiError holding the envelope's message; a 401 also
 * updates #key-status. `json` sends a JSON body; `body` anything fetch() takes.
 */
export async function api(path, { method = 'GET', json, body, signal } = {}) {
  const key = getKey();
  const headers = {};
  if (key) headers.Authorization = `Bearer ${key}`;
  if (json !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(json);
  }
  let response;
  try {
    response = await fetch(apiURL(path), { method, headers, body, signal });
  } catch (error) {
    if (error.name === 'AbortError') throw error;
    throw new ApiError(NETWORK_MESSAGE);
  }
  noteAnswer(response.status, Boolean(key));
  if (!response.ok) throw await errorOf(response);
  return response;
}

/**
 * GET a probe (/ready, /metrics), and return whatever status it answers. Public by
 * default, but an operator may take them out of public_paths: the key goes along when
 * there is one, and a 401 here says nothing about the key's use for the API.
 */
export async function probe(path) {
  const key = getKey();
  const headers = key ? { Authorization: `Bearer ${key}` } : {};
  try {
    return await fetch(apiURL(path), { cache: 'no-store', headers });
  } catch {
    throw new ApiError(NETWORK_MESSAGE);
  }
}

/** The text to show for any error thrown by the helpers above (or by the browser). */
export function messageOf(error) {
  if (error instanceof ApiError) return error.message;
  if (error?.name === 'NotAllowedError') {
    return 'The browser refused access to the microphone. Allow it for this page and try again.';
  }
  if (error?.name === 'NotFoundError') return 'No microphone was found.';
  return error?.message || String(error);
}
