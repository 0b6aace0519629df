// Server panel: /ready, GET v1/models and a few scheduler figures from /metrics,
// refreshed every few seconds while the panel is in view.

import { api, messageOf, probe } from './api.js';
import { $, el, setStatus, showError } from './ui.js';

const REFRESH_MS = 5000;
let timer = null;
let refreshing = null; // the refresh in progress: clicks and ticks join it, not stack up

export function setupServer() {
  $('server-refresh').addEventListener('click', () => refresh());
  document.addEventListener('visibilitychange', () => schedule());
}

let panelShown = false;

/** Called when the Server tab is selected or left. */
export function serverPanelShown(shown) {
  panelShown = shown;
  if (shown) refresh();
  schedule();
}

// Auto-refresh only while someone can see it: the tab selected and the page visible.
function schedule() {
  const wanted = panelShown && document.visibilityState === 'visible';
  if (wanted && !timer) timer = setInterval(() => refresh(), REFRESH_MS);
  if (!wanted && timer) {
    clearInterval(timer);
    timer = null;
  }
}

export function refresh() {
  refreshing ??= load().finally(() => {
    refreshing = null;
  });
  return refreshing;
}

async function load() {
  const status = $('server-status');
  const error = $('server-error');
  const button = $('server-refresh');
  button.disabled = true;
  setStatus(status, 'working', 'Refreshing…');
  // The three sources are independent: each shows what it got, and the first failure
  // is the panel's error.
  const results = await Promise.allSettled([metricsAndReady(), models()]);
  const failure = results.find((r) => r.status === 'rejected');
  showError(error, failure ? messageOf(failure.reason) : '');
  setStatus(status, failure ? 'error' : 'done', failure ? 'Failed' : 'Up to date');
  $('server-updated').textContent = `Updated ${new Date().toTimeString().slice(0, 8)}`;
  button.disabled = false;
}

async function metricsAndReady() {
  const [ready, metrics] = await Promise.all([
    probe('ready'),
    probe('metrics').then(async (r) => (r.ok ? parseMetrics(await r.text()) : null)),
  ]);
  await showReady(ready, metrics);
  showMetrics(metrics);
}

async function showReady(response, metrics) {
  const box = $('server-ready');
  const isReady = response.status === 200;
  box.dataset.state = isReady ? 'ready' : 'not-ready';
  let detail = '';
  if (!isReady) {
    try {
      detail = (await response.json())?.error?.message ?? '';
    } catch {
      detail = response.statusText;
    }
  }
  const headline = el(
    'p',
    { class: 'headline' },
    `${response.status} ${isReady ? 'Ready' : 'Not ready'}`,
  );
  const parts = [headline];
  if (detail) parts.push(el('p', {}, detail));
  // Per-model states come from voxserve_model_state (1 for the state a model is in).
  const states = (metrics?.get('voxserve_model_state') ?? []).filter((s) => s.value === 1);
  if (states.length) {
    const list = el('ul', { class: 'states' });
    for (const { labels } of states) {
      list.append(
        el('li', { 'data-model': labels.model, 'data-state': labels.state },
          el('span', { class: 'model' }, labels.model), ' ', el('span', { class: 'badge' }, labels.state)),
      );
    }
    parts.push(list);
  }
  box.replaceChildren(...parts);
}

async function models() {
  const body = $('server-models').tBodies[0];
  try {
    const list = await (await api('v1/models')).json();
    body.replaceChildren(
      ...(list.data ?? []).map((m) => el('tr', {}, el('td', {}, m.id), el('td', {}, m.owned_by ?? ''))),
    );
  } catch (err) {
    body.replaceChildren();
    throw err;
  }
}

function showMetrics(metrics) {
  const dl = $('server-metrics');
  if (!metrics) {
    dl.replaceChildren(el('div', {}, el('dt', {}, 'Metrics'), el('dd', {}, 'not available')));
    return;
  }
  const groups = [
    item('Requests in flight', 'voxserve_requests_in_flight', null, value(metrics, 'voxserve_requests_in_flight')),
    item('Realtime sessions', 'voxserve_realtime_sessions', null, value(metrics, 'voxserve_realtime_sessions')),
  ];
  // Queues are per scheduler: one per transcription model and one per speech backend.
  const sums = byModel(metrics, 'voxserve_batch_size_sum');
  const counts = byModel(metrics, 'voxserve_batch_size_count');
  for (const [model, depth] of byModel(metrics, 'voxserve_queue_depth')) {
    groups.push(item(`Queue depth · ${model}`, 'voxserve_queue_depth', model, depth));
    const count = counts.get(model) ?? 0;
    const mean = count ? (sums.get(model) ?? 0) / count : null;
    groups.push(item(`Mean batch size · ${model}`, 'voxserve_batch_size', model, mean, 2));
  }
  dl.replaceChildren(...groups);
}

function item(label, metric, model, number, digits = 0) {
  const dd = el('dd', { 'data-metric': metric }, format(number, digits));
  if (model !== null) dd.dataset.model = model;
  return el('div', { class: 'metric-item' }, el('dt', {}, label), dd);
}

function format(number, digits) {
  if (number === null || number === undefined || Number.isNaN(number)) return '–';
  return digits ? number.toFixed(digits) : String(Math.round(number));
}

function value(metrics, name) {
  return metrics.get(name)?.[0]?.value ?? null;
}

function byModel(metrics, name) {
  return new Map((metrics.get(name) ?? []).map((s) => [s.labels.model, s.value]));
}

/** Prometheus text format into name -> [{labels, value}] (comments and types skipped). */
export function parseMetrics(text) {
  const out = new Map();
  const line = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
  const label = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
  for (const raw of text.split('\n')) {
    if (!raw || raw.startsWith('#')) continue;
    const match = line.exec(raw);
    if (!match) continue;
    const labels = {};
    for (const [, name, escaped] of (match[2] ?? '').matchAll(label)) {
      labels[name] = escaped.replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
    }
    if (!out.has(match[1])) out.set(match[1], []);
    out.get(match[1]).push({ labels, value: Number(match[3]) });
  }
  return out;
}
