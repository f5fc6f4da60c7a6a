// HTTP client of the REST API (/api/v1) and the UI helpers (/ui): JSON in and out, bearer token,
// and "ask for a token, then retry" when the server answers 401.

export const API = "/api/v1";
const TOKEN_KEY = "prunesearch.token";

export class ApiError extends Error {
  constructor(status, detail, response = null) {
    super(typeof detail === "string" ? detail : (detail && detail.msg) || `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
    this.response = response;
  }
}

export const auth = {
  get token() {
    try { return localStorage.getItem(TOKEN_KEY) || ""; } catch { return ""; }
  },
  set(token) {
    try {
      if (token) localStorage.setItem(TOKEN_KEY, token);
      else localStorage.removeItem(TOKEN_KEY);
    } catch { /* private mode: the token lives for this page only */ }
    document.dispatchEvent(new CustomEvent("ps:token", {detail: {set: !!token}}));
  },
  /** Set once a GET needed a token (PRUNESEARCH_AUTH_READ=1): downloads then go through fetch. */
  readsNeedToken: false,
};

export function authHeaders() {
  const token = auth.token;
  return token ? {Authorization: `Bearer ${token}`} : {};
}

let pendingPrompt = null;

/**
 * Ask the person for a token (the <dialog> in index.html); resolves to the token or null (cancelled).
 * Concurrent 401s share one prompt.
 */
export function askToken(message) {
  if (pendingPrompt) return pendingPrompt;
  const dialog = document.getElementById("token-dialog");
  const input = document.getElementById("token-dialog-input");
  const text = document.getElementById("token-dialog-message");
  text.textContent = message || "";
  input.value = "";
  pendingPrompt = new Promise((resolve) => {
    const done = () => {
      dialog.removeEventListener("close", done);
      pendingPrompt = null;
      const token = dialog.returnValue === "save" ? input.value.trim() : "";
      if (token) auth.set(token);
      resolve(token || null);
    };
    dialog.addEventListener("close", done);
    dialog.returnValue = "";
    dialog.showModal();
    input.focus();
  });
  return pendingPrompt;
}

async function parseBody(res) {
  const type = res.headers.get("content-type") || "";
  if (res.status === 204) return null;
  if (type.includes("json")) {
    try { return await res.json(); } catch { return null; }
  }
  return await res.text();
}

/**
 * Call the API. `path` is relative to /api/v1 unless it starts with "/ui/".
 * Options: method, body (JSON), query (object; arrays repeat the key), signal.
 * Throws ApiError (status, detail) on a non-2xx answer; 401 prompts for a token and retries.
 */
export async function api(path, {method = "GET", body, query, signal, prompt = true} = {}) {
  let url = path.startsWith("/ui/") ? path : API + path;
  if (query) {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(query)) {
      if (value === undefined || value === null || value === "") continue;
      for (const v of Array.isArray(value) ? value : [value]) params.append(key, String(v));
    }
    const qs = params.toString();
    if (qs) url += (url.includes("?") ? "&" : "?") + qs;
  }
  for (;;) {
    const headers = {Accept: "application/json", ...authHeaders()};
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let res;
    try {
      res = await fetch(url, {method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal});
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError(0, `cannot reach the server (${err.message})`);
    }
    const data = await parseBody(res);
    if (res.ok) return data;
    const detail = data && typeof data === "object" && "detail" in data ? data.detail : data;
    if (res.status === 401 && prompt) {
      if (method === "GET") auth.readsNeedToken = true;
      const why = auth.token ? "The saved token was not accepted" : "This action needs a token";
      const token = await askToken(`${why}: ${typeof detail === "string" ? detail : "401 Unauthorized"}.`);
      if (token) continue;
    }
    throw new ApiError(res.status, detail, res);
  }
}

/** Download a URL with the token in a header (only needed when reads need a token). */
export async function downloadWithToken(url, filename) {
  const res = await fetch(url, {headers: authHeaders()});
  if (!res.ok) throw new ApiError(res.status, (await parseBody(res))?.detail || res.statusText);
  const blob = await res.blob();
  const href = URL.createObjectURL(blob);
  const a = Object.assign(document.createElement("a"), {href, download: filename});
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(href), 10000);
}
