// The trial detail panel: state, timings, metrics, config, achieved sparsity, error traceback, log.

import {api} from "./api.js";
import {describeError, fill, fmt, h, loading, stateBadge} from "./dom.js";

const LOG_TAIL = 64 * 1024;
const LOG_MAX = 4 * 1024 * 1024;

function kvTable(obj, format = (v) => (typeof v === "number" ? +v.toPrecision(6) : JSON.stringify(v))) {
  const entries = Object.entries(obj || {});
  if (!entries.length) return h("p", {class: "muted small"}, "—");
  return h("table", {class: "kv"}, h("tbody", {}, entries.map(([k, v]) => h("tr", {}, h("th", {scope: "row"}, k), h("td", {}, format(v))))));
}

export class TrialDetail {
  constructor({experimentId, onClose, onOpenTrial}) {
    this.experimentId = experimentId;
    this.onClose = onClose;
    this.onOpenTrial = onOpenTrial;
    this.number = null;
    this.body = h("div", {class: "detail-body"});
    this.title = h("h2", {id: "trial-detail-title"}, "Trial");
    this.el = h("aside", {class: "trial-detail", id: "trial-detail", "aria-labelledby": "trial-detail-title", hidden: true, tabindex: "-1"},
      h("div", {class: "detail-head"}, this.title,
        h("button", {type: "button", class: "btn small ghost", "aria-label": "Close trial details", onclick: () => this.close()}, "Close ✕")),
      this.body);
    this.el.addEventListener("keydown", (e) => { if (e.key === "Escape") this.close(); });
    this.seq = 0;
  }

  close() {
    this.number = null;
    this.el.hidden = true;
    this.onClose && this.onClose();
  }

  async open(number, {logBytes = LOG_TAIL, focus = true} = {}) {
    const seq = ++this.seq;
    const first = this.number !== number;
    this.number = number;
    this.el.hidden = false;
    this.title.textContent = number === -1 ? "Pretrain trial" : `Trial #${number}`;
    if (first) fill(this.body, loading("Loading the trial…"));
    if (focus) this.el.focus({preventScroll: false});
    let t;
    try {
      t = await api(`/experiments/${this.experimentId}/trials/${number}`, {query: {log_bytes: logBytes}});
    } catch (err) {
      if (seq === this.seq) fill(this.body, h("p", {class: "error-text", role: "alert"}, describeError(err)));
      return;
    }
    if (seq !== this.seq) return;
    this.render(t, logBytes);
  }

  /** Re-read the open trial (a live event touched it), keeping the scroll position. */
  refresh(number) {
    if (this.number === number && !this.el.hidden) this.open(number, {focus: false});
  }

  render(t, logBytes) {
    const m = t.metrics || {};
    const section = (title, ...content) => h("section", {class: "detail-section"}, h("h3", {}, title), ...content);
    const parent = t.parent_number === null || t.parent_number === undefined ? "—"
      : h("button", {type: "button", class: "linkish", onclick: () => this.onOpenTrial(t.parent_number)}, t.parent_number === -1 ? "pretrain" : `#${t.parent_number}`);
    const log = h("pre", {class: "log", tabindex: "0", "aria-label": "Trial log"}, t.log ?? "(no log)");
    const content = [
      h("dl", {class: "facts"},
        h("dt", {}, "Status"), h("dd", {}, stateBadge(t.state)),
        h("dt", {}, "Score"), h("dd", {}, fmt.score(t.score)),
        h("dt", {}, "FLOPs"), h("dd", {}, `${fmt.ratio(m.flops_ratio)} (${fmt.si(m.flops)})`),
        h("dt", {}, "Params"), h("dd", {}, `${fmt.ratio(m.params_ratio)} (${fmt.si(m.params)})`),
        h("dt", {}, "Latency"), h("dd", {}, fmt.ms(m.latency_ms)),
        h("dt", {}, "Duration"), h("dd", {}, fmt.duration(t.duration_s)),
        h("dt", {}, "Parent"), h("dd", {}, parent),
        h("dt", {}, "Attempt"), h("dd", {}, String(t.attempt ?? 1)),
        h("dt", {}, "Worker"), h("dd", {class: "mono small"}, t.worker || "—"),
        h("dt", {}, "Started"), h("dd", {}, fmt.date(t.started_at)),
        h("dt", {}, "Finished"), h("dd", {}, fmt.date(t.finished_at))),
    ];
    if (t.error) content.push(section("Error", h("pre", {class: "traceback", tabindex: "0", "aria-label": "Error traceback"}, t.error)));
    content.push(
      section("Parameters", h("pre", {class: "json"}, JSON.stringify(t.params || {}, null, 2))),
      section("Config list", h("pre", {class: "json"}, JSON.stringify(t.config_list || [], null, 2))),
      section("Metrics", kvTable(m)),
      section("Achieved sparsity", kvTable(t.achieved_sparsity, (v) => fmt.ratio(v))),
      section(`Log${t.log_size ? ` (${fmt.bytes(t.log_size)})` : ""}`,
        t.log_truncated ? h("p", {class: "muted small"}, `Showing the last ${fmt.bytes(logBytes)}. `,
          logBytes < LOG_MAX ? h("button", {type: "button", class: "linkish", onclick: () => this.open(t.number, {logBytes: LOG_MAX})}, "Load more") : null) : null,
        log));
    fill(this.body, ...content);
    log.scrollTop = log.scrollHeight;
  }
}
