// Server-Sent Events over fetch(): the wire format of service/sse.py, resumed with Last-Event-ID.
//
// Why not EventSource: it cannot send an Authorization header, and a server started with
// PRUNESEARCH_AUTH_READ=1 needs the token on reads too. This reader does what EventSource does
// (the `retry:` hint, reconnect, Last-Event-ID) and also stops for good on `event: end`.

import {askToken, auth, authHeaders} from "./api.js";

/**
 * Open a stream. Callbacks: onEvent(kind, data, id), onEnd(data), onStatus("live"|"reconnecting"|"ended"|"gone"|"error").
 * Returns {close()}.
 */
export function openEventStream(url, {after = 0, onEvent, onEnd, onStatus = () => {}}) {
  let closed = false;
  let controller = null;
  let lastId = after;
  let retryMs = 3000;
  let failures = 0;

  const dispatch = (msg) => {
    if (msg.id !== null) {
      const n = Number(msg.id);
      if (Number.isFinite(n)) lastId = Math.max(lastId, n);
    }
    let data = null;
    try { data = msg.data ? JSON.parse(msg.data) : null; } catch { data = msg.data; }
    if (msg.event === "end") {
      closed = true;
      onStatus("ended");
      onEnd && onEnd(data);
      return;
    }
    onEvent(msg.event || "message", data, lastId);
  };

  async function readOnce() {
    controller = new AbortController();
    const headers = {Accept: "text/event-stream", ...authHeaders()};
    if (lastId > 0) headers["Last-Event-ID"] = String(lastId);
    const res = await fetch(url, {headers, signal: controller.signal, cache: "no-store"});
    if (res.status === 401) {
      auth.readsNeedToken = true;
      const token = await askToken("Reading this experiment's live events needs a token.");
      if (!token) { closed = true; onStatus("error"); }
      return;
    }
    if (res.status === 404) { closed = true; onStatus("gone"); return; }
    if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
    onStatus("live");
    failures = 0;
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let msg = {id: null, event: null, data: ""};
    let hasData = false;
    for (;;) {
      const {value, done} = await reader.read();
      if (done) return;
      buffer += value;
      let nl;
      while ((nl = buffer.search(/\r\n|\r|\n/)) >= 0) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + (buffer[nl] === "\r" && buffer[nl + 1] === "\n" ? 2 : 1));
        if (line === "") {
          if (hasData || msg.event) dispatch(msg);
          if (closed) { controller.abort(); return; }
          msg = {id: null, event: null, data: ""};
          hasData = false;
          continue;
        }
        if (line.startsWith(":")) continue; // comment (keep-alive)
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? "" : line.slice(colon + 1);
        if (val.startsWith(" ")) val = val.slice(1);
        if (field === "data") { msg.data += (hasData ? "\n" : "") + val; hasData = true; }
        else if (field === "event") msg.event = val;
        else if (field === "id") msg.id = val;
        else if (field === "retry" && /^\d+$/.test(val)) retryMs = Number(val);
      }
    }
  }

  (async () => {
    while (!closed) {
      try {
        await readOnce();
      } catch {
        if (closed) return; // aborted by close(); otherwise a network error: reconnect below
      }
      if (closed) return;
      onStatus("reconnecting");
      const wait = Math.min(retryMs * 2 ** Math.min(failures, 4), 30000);
      failures += 1;
      await new Promise((r) => setTimeout(r, wait));
    }
  })();

  return {
    close() {
      closed = true;
      if (controller) controller.abort();
    },
    get lastEventId() { return lastId; },
    get closed() { return closed; },
  };
}
