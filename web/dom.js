// Small DOM and formatting helpers shared by the views.

/** Create an element: h("a", {href: "/", class: "x", onclick: fn}, "text", child). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "style" && typeof value === "object") Object.assign(el.style, value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace el's children (null / false / undefined children are skipped, arrays flattened). */
export function fill(el, ...children) {
  clear(el);
  append(el, children);
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

// The chain algorithms run exactly total_iteration trials (their max_trials defaults to it).
const CHAIN = new Set(["agp", "linear", "lottery_ticket"]);

/** How many trials the experiment will run, when that is known (max_trials, or a chain's length). */
export function plannedTrials(exp) {
  if (Number.isInteger(exp.max_trials)) return exp.max_trials;
  const algo = exp.spec?.algorithm || {};
  if (Number.isInteger(algo.max_trials)) return algo.max_trials;
  return CHAIN.has(exp.algorithm) && Number.isInteger(algo.total_iteration) ? algo.total_iteration : null;
}

export function stateBadge(state) {
  return h("span", {class: `badge state-${state}`, dataset: {state}}, state);
}

const isNum = (x) => typeof x === "number" && Number.isFinite(x);

export const fmt = {
  score(x) { return isNum(x) ? x.toFixed(4) : "—"; },
  ratio(x) { return isNum(x) ? `${(x * 100).toFixed(1)}%` : "—"; },
  si(x) {
    if (!isNum(x)) return "—";
    const a = Math.abs(x);
    if (a >= 1e9) return `${(x / 1e9).toFixed(2)}G`;
    if (a >= 1e6) return `${(x / 1e6).toFixed(2)}M`;
    if (a >= 1e3) return `${(x / 1e3).toFixed(1)}k`;
    return `${Math.round(x)}`;
  },
  ms(x) { return isNum(x) ? `${x.toFixed(2)} ms` : "—"; },
  duration(s) {
    if (!isNum(s)) return "—";
    if (s < 1) return `${Math.round(s * 1000)} ms`;
    if (s < 90) return `${s.toFixed(1)} s`;
    if (s < 5400) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
    return `${(s / 3600).toFixed(1)} h`;
  },
  bytes(n) {
    if (!isNum(n)) return "—";
    if (n >= 1 << 30) return `${(n / (1 << 30)).toFixed(1)} GiB`;
    if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`;
    if (n >= 1 << 10) return `${(n / (1 << 10)).toFixed(1)} KiB`;
    return `${n} B`;
  },
  date(iso) { return iso ? new Date(iso).toLocaleString() : "—"; },
  ago(iso) {
    if (!iso) return "—";
    const s = (Date.now() - new Date(iso).getTime()) / 1000;
    if (s < 45) return "just now";
    if (s < 3600) return `${Math.round(s / 60)} min ago`;
    if (s < 86400) return `${Math.round(s / 3600)} h ago`;
    return `${Math.round(s / 86400)} d ago`;
  },
};

/** A spinner-and-text loading block, an empty state, and an error state with a retry button. */
export function loading(text = "Loading…") {
  return h("div", {class: "state-block loading", role: "status", "aria-busy": "true"}, h("span", {class: "spinner", "aria-hidden": "true"}), text);
}

export function emptyState(title, text, action) {
  return h("div", {class: "state-block empty"}, h("p", {class: "state-title"}, title), text ? h("p", {class: "muted"}, text) : null, action || null);
}

export function errorState(error, onRetry) {
  return h("div", {class: "state-block error", role: "alert"},
    h("p", {class: "state-title"}, "Something went wrong"),
    h("p", {}, describeError(error)),
    onRetry ? h("button", {class: "btn", type: "button", onclick: onRetry}, "Retry") : null);
}

/** A one-line human message for an ApiError / network error. */
export function describeError(error) {
  if (!error) return "unknown error";
  const detail = error.detail;
  if (typeof detail === "string") return `${error.status ? `HTTP ${error.status}: ` : ""}${detail}`;
  if (detail && typeof detail === "object" && !Array.isArray(detail) && detail.msg) return detail.msg;
  if (Array.isArray(detail)) return detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
  return error.message || String(error);
}

let toastSeq = 0;
/** Show a short message in the live region (kind: info | error | success). */
export function toast(message, kind = "info", ms = 6000) {
  const box = document.getElementById("toasts");
  if (!box) return;
  const el = h("div", {class: `toast ${kind}`, id: `toast-${++toastSeq}`, role: kind === "error" ? "alert" : null}, message,
    h("button", {class: "toast-close", type: "button", "aria-label": "Dismiss", onclick: () => el.remove()}, "×"));
  box.append(el);
  setTimeout(() => el.remove(), ms);
}

/** Path parts (strings and integer indices) → "pruner.config_list[0].sparse_ratio". */
export function pathKey(parts) {
  let out = "";
  for (const part of parts) {
    if (typeof part === "number") out += `[${part}]`;
    else out += out ? `.${part}` : String(part);
  }
  return out;
}

/** Call fn at most once every `ms` (trailing call kept). */
export function throttle(fn, ms) {
  let timer = null;
  let last = 0;
  return (...args) => {
    const wait = Math.max(0, last + ms - Date.now());
    if (timer) return;
    timer = setTimeout(() => { timer = null; last = Date.now(); fn(...args); }, wait);
  };
}

export function debounce(fn, ms) {
  let timer = null;
  const wrapped = (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
  wrapped.cancel = () => clearTimeout(timer);
  return wrapped;
}
