// Small DOM helpers the panels share: status badges, alerts, option lists.

export const $ = (id) => document.getElementById(id);

/** Set a panel's status element: `data-state` is what tests and styles key on. */
export function setStatus(el, state, text) {
  el.dataset.state = state;
  el.textContent = text;
}

/** Show (or, with '', clear) a panel's alert. */
export function showError(el, message) {
  el.textContent = message ?? '';
}

/** Replace a <select>'s options, keeping the current choice if it is still offered. */
export function fillSelect(select, values, preferred) {
  const current = select.value;
  select.replaceChildren(...values.map((value) => new Option(value, value)));
  const pick = [current, preferred].find((v) => v && values.includes(v)) ?? values[0];
  if (pick !== undefined) select.value = pick;
}

/** "m:ss.s": the clock the segment list and recorder show. */
export function clock(seconds) {
  const tenths = Math.round(Math.max(0, seconds) * 10); // round first: 59.96 is 1:00.0
  const minutes = Math.floor(tenths / 600);
  return `${minutes}:${((tenths % 600) / 10).toFixed(1).padStart(4, '0')}`;
}

/** Element with text and optional attributes; keeps rendering code short and inline-free. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === 'class') node.className = value;
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

/** Why getUserMedia is missing: almost always a plain-http page on another host. */
export function microphoneUnavailable() {
  return window.isSecureContext
    ? 'This browser cannot capture audio here.'
    : 'Browsers allow the microphone only on secure pages: open the playground over ' +
        'https, or as http://localhost (an SSH tunnel works).';
}
