// The trial table: a virtual scroller (only the visible rows exist in the DOM) over the server's
// cursor-paginated, server-sorted trial list. Pages are fetched in order as the person scrolls;
// live events update rows in place.

import {api} from "./api.js";
import {describeError, fill, fmt, h, stateBadge} from "./dom.js";

const ROW_H = 36;
const OVERSCAN = 8;
const FIRST_PAGE = 100;
const PAGE = 500;

const COLUMNS = [
  {key: "number", label: "#", sort: "number", cls: "num"},
  {key: "state", label: "Status"},
  {key: "config", label: "Config"},
  {key: "score", label: "Score", sort: "score", cls: "num"},
  {key: "flops", label: "FLOPs", sort: "flops_ratio", cls: "num"},
  {key: "params", label: "Params", cls: "num"},
  {key: "latency", label: "Latency", cls: "num"},
  {key: "sparsity", label: "Sparsity", cls: "num"},
  {key: "duration", label: "Duration", sort: "duration_s", cls: "num"},
];

/** A short, readable summary of a trial's parameters or config list. */
function configText(t) {
  const params = t.params && Object.keys(t.params).length ? t.params : null;
  if (params) {
    return Object.entries(params).map(([k, v]) => `${k}=${typeof v === "number" ? +v.toFixed(4) : typeof v === "object" ? JSON.stringify(v) : v}`).join(", ");
  }
  if (Array.isArray(t.config_list)) {
    return t.config_list.map((c) => {
      const what = c.op_names ? c.op_names.join("|") : c.op_types ? c.op_types.join("|") : "*";
      const ratio = c.sparse_ratio ?? c.sparsity ?? c.total_sparsity;
      return ratio === undefined ? what : `${what}: ${+Number(ratio).toFixed(3)}`;
    }).join("; ");
  }
  return "";
}

function meanSparsity(t) {
  const values = Object.values(t.achieved_sparsity || {}).filter((v) => typeof v === "number");
  return values.length ? values.reduce((a, b) => a + b, 0) / values.length : null;
}

function cellText(t, key) {
  const m = t.metrics || {};
  switch (key) {
    case "number": return t.number === -1 ? "pre" : String(t.number);
    case "config": return configText(t);
    case "score": return fmt.score(t.score);
    case "flops": return m.flops_ratio !== undefined ? `${fmt.ratio(m.flops_ratio)} · ${fmt.si(m.flops)}` : "—";
    case "params": return m.params_ratio !== undefined ? `${fmt.ratio(m.params_ratio)} · ${fmt.si(m.params)}` : "—";
    case "latency": return fmt.ms(m.latency_ms);
    case "sparsity": return fmt.ratio(meanSparsity(t));
    case "duration": return fmt.duration(t.duration_s);
    default: return "";
  }
}

export class TrialTable {
  /**
   * @param {{experimentId: number, onSelect: (number) => void, onFirstPage?: Function}} opts
   */
  constructor({experimentId, onSelect, onFirstPage}) {
    this.experimentId = experimentId;
    this.onSelect = onSelect;
    this.onFirstPage = onFirstPage;
    this.sort = "number";
    this.rows = [];
    this.byNumber = new Map();
    this.count = 0;
    this.cursor = undefined; // undefined: not started; null: no more pages
    this.fetching = null;
    this.generation = 0;
    this.selected = null;
    this.progress = new Map(); // number → "finetune 1/2" while running
    this.pool = [];
    this.newSinceSort = 0;
    this.counted = new Set(); // new trials counted but left to a page still to be fetched

    this.headerCells = COLUMNS.map((c) => {
      const cell = h("div", {class: `vt-cell vt-h ${c.cls || ""} col-${c.key}`, role: "columnheader"});
      if (c.sort) {
        cell.append(h("button", {type: "button", class: "sort-btn", onclick: () => this.toggleSort(c.sort)}, c.label, h("span", {class: "sort-arrow", "aria-hidden": "true"})));
      } else cell.textContent = c.label;
      cell.dataset.sort = c.sort || "";
      return cell;
    });
    this.spacer = h("div", {class: "vt-spacer"});
    this.viewport = h("div", {class: "vt-viewport", tabindex: "-1"}, this.spacer);
    this.notice = h("div", {class: "vt-notice", hidden: true});
    this.status = h("div", {class: "vt-status muted small", role: "status", "aria-live": "polite"});
    this.el = h("div", {class: "vt", role: "table", "aria-label": "Trials", "aria-rowcount": "1", id: "trials-table"},
      h("div", {class: "vt-toolbar"}, this.status, this.notice),
      h("div", {class: "vt-scroll"},
        h("div", {class: "vt-row vt-head", role: "row", "aria-rowindex": "1"}, this.headerCells),
        this.viewport));
    this.viewport.addEventListener("scroll", () => this.schedule(), {passive: true});
    this.resizeObserver = new ResizeObserver(() => this.schedule());
    this.resizeObserver.observe(this.viewport);
    this.updateSortHeaders();
  }

  destroy() {
    this.generation += 1;
    this.resizeObserver.disconnect();
  }

  toggleSort(key) {
    this.sort = this.sort === key ? `-${key}` : this.sort === `-${key}` ? key : key === "number" ? key : `-${key}`;
    this.reload();
  }

  updateSortHeaders() {
    for (const cell of this.headerCells) {
      const key = cell.dataset.sort;
      if (!key) continue;
      const dir = this.sort === key ? "ascending" : this.sort === `-${key}` ? "descending" : "none";
      cell.setAttribute("aria-sort", dir);
      cell.querySelector(".sort-arrow").textContent = dir === "ascending" ? " ▲" : dir === "descending" ? " ▼" : "";
    }
  }

  /** Drop everything and fetch the first page again (sort changed, or "show new trials"). */
  async reload() {
    this.generation += 1;
    this.rows = [];
    this.byNumber.clear();
    this.cursor = undefined;
    this.fetching = null;
    this.newSinceSort = 0;
    this.counted.clear();
    this.notice.hidden = true;
    this.viewport.scrollTop = 0;
    this.updateSortHeaders();
    await this.fetchMore(FIRST_PAGE);
    this.render();
  }

  /** Fetch the next page (one request at a time; the cursor chain is sequential). */
  fetchMore(limit = PAGE) {
    if (this.cursor === null) return Promise.resolve();
    if (this.fetching) return this.fetching;
    const gen = this.generation;
    this.el.setAttribute("aria-busy", "true");
    this.fetching = api(`/experiments/${this.experimentId}/trials`, {query: {sort: this.sort, limit, cursor: this.cursor || undefined}})
      .then((page) => {
        if (gen !== this.generation) return;
        this.count = Math.max(page.count, this.rows.length + page.data.length);
        for (const t of page.data) {
          if (this.byNumber.has(t.number)) { Object.assign(this.byNumber.get(t.number), t); continue; }
          this.rows.push(t);
          this.byNumber.set(t.number, t);
        }
        this.cursor = page.next_cursor;
        this.status.textContent = `${this.count.toLocaleString()} trial${this.count === 1 ? "" : "s"}`;
        if (this.onFirstPage) { const cb = this.onFirstPage; this.onFirstPage = null; cb(); }
      })
      .catch((err) => {
        if (gen !== this.generation) return;
        this.status.textContent = `Could not load trials: ${describeError(err)}`;
        this.cursor = this.cursor === undefined ? undefined : this.cursor;
        throw err;
      })
      .finally(() => {
        if (gen === this.generation) { this.fetching = null; this.el.removeAttribute("aria-busy"); this.schedule(); }
      });
    return this.fetching;
  }

  schedule() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => { this.frame = null; this.render(); });
  }

  /** Draw the rows in view; ask for more pages when the view reaches past the loaded rows. */
  render() {
    const total = Math.max(this.count, this.rows.length);
    this.el.setAttribute("aria-rowcount", String(total + 1));
    this.spacer.style.height = `${total * ROW_H}px`;
    // as tall as the rows (at least 3), up to the CSS max-height; then it scrolls
    this.viewport.style.height = `${Math.max(3, total) * ROW_H + 2}px`;
    const top = this.viewport.scrollTop;
    const height = this.viewport.clientHeight || 400;
    const first = Math.max(0, Math.floor(top / ROW_H) - OVERSCAN);
    const last = Math.min(total - 1, Math.ceil((top + height) / ROW_H) + OVERSCAN);
    if (last >= this.rows.length && this.cursor !== null && !this.fetching) this.fetchMore().catch(() => {});
    const needed = Math.max(0, last - first + 1);
    while (this.pool.length < needed) {
      const cells = COLUMNS.map((c) => h("div", {class: `vt-cell ${c.cls || ""} col-${c.key}`, role: "cell"}));
      const row = h("div", {class: "vt-row", role: "row", tabindex: "0"}, cells);
      row.addEventListener("click", () => { if (row.dataset.number) this.select(Number(row.dataset.number)); });
      row.addEventListener("keydown", (e) => this.onRowKey(e, row));
      this.pool.push(row);
      this.viewport.append(row);
    }
    for (let i = 0; i < this.pool.length; i++) {
      const row = this.pool[i];
      const index = first + i;
      if (i >= needed) { row.hidden = true; continue; }
      row.hidden = false;
      row.style.transform = `translateY(${index * ROW_H}px)`;
      row.setAttribute("aria-rowindex", String(index + 2));
      this.fillRow(row, this.rows[index], index);
    }
  }

  fillRow(row, t, index) {
    const cells = row.children;
    if (!t) {
      row.dataset.number = "";
      row.dataset.index = String(index);
      row.className = "vt-row placeholder";
      row.setAttribute("aria-busy", "true");
      for (const cell of cells) cell.textContent = "";
      cells[1].textContent = "loading…";
      return;
    }
    row.removeAttribute("aria-busy");
    row.dataset.number = String(t.number);
    row.dataset.index = String(index);
    const discarded = t.state === "discarded" ? " discarded" : ""; // muted: not a trial of the search
    row.className = `vt-row${discarded}${this.selected === t.number ? " selected" : ""}`;
    row.setAttribute("aria-selected", this.selected === t.number ? "true" : "false");
    for (let c = 0; c < COLUMNS.length; c++) {
      const key = COLUMNS[c].key;
      const cell = cells[c];
      if (key === "state") {
        const progress = t.state === "running" ? this.progress.get(t.number) : null;
        cell.replaceChildren(stateBadge(t.state), progress ? h("span", {class: "small muted"}, ` ${progress}`) : "");
        cell.title = t.error ? t.error.trim().split("\n").slice(-1)[0] : "";
      } else {
        const text = cellText(t, key);
        if (cell.textContent !== text) cell.textContent = text;
        if (key === "config" || key === "sparsity") cell.title = key === "config" ? text : Object.entries(t.achieved_sparsity || {}).map(([k, v]) => `${k}: ${fmt.ratio(v)}`).join("\n");
      }
    }
  }

  onRowKey(e, row) {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); row.click(); return; }
    if (e.key !== "ArrowDown" && e.key !== "ArrowUp") return;
    e.preventDefault();
    const index = Number(row.dataset.index) + (e.key === "ArrowDown" ? 1 : -1);
    if (index < 0 || index >= Math.max(this.count, this.rows.length)) return;
    const top = index * ROW_H;
    if (top < this.viewport.scrollTop) this.viewport.scrollTop = top;
    else if (top + ROW_H > this.viewport.scrollTop + this.viewport.clientHeight) this.viewport.scrollTop = top + ROW_H - this.viewport.clientHeight;
    this.render();
    const next = this.pool.find((r) => !r.hidden && r.dataset.index === String(index));
    next && next.focus();
  }

  select(number) {
    this.selected = number;
    this.render();
    this.onSelect(number);
  }

  /** Apply a live change to a trial (from an SSE event or a re-read). New trials go where the sort puts them. */
  upsert(partial) {
    const existing = this.byNumber.get(partial.number);
    if (existing) {
      Object.assign(existing, partial);
      this.schedule();
      return;
    }
    if (this.counted.has(partial.number)) return; // its page brings the full row
    const row = {state: "pending", params: {}, metrics: {}, ...partial};
    if (this.sort === "number" && this.cursor === null) {
      this.rows.push(row);
      this.byNumber.set(row.number, row);
      this.count = Math.max(this.count + 1, this.rows.length);
    } else if (this.sort === "-number" && this.cursor !== undefined) {
      this.rows.unshift(row);
      this.byNumber.set(row.number, row);
      this.count += 1;
    } else if (this.sort === "number") {
      this.count += 1; // a page still to be fetched holds it
      this.counted.add(row.number);
    } else {
      this.counted.add(row.number);
      this.newSinceSort += 1;
      fill(this.notice, `${this.newSinceSort} new trial${this.newSinceSort === 1 ? "" : "s"} `,
        h("button", {type: "button", class: "btn small", onclick: () => this.reload()}, "Re-sort"));
      this.notice.hidden = false;
      return;
    }
    this.status.textContent = `${this.count.toLocaleString()} trial${this.count === 1 ? "" : "s"}`;
    this.schedule();
  }

  setProgress(number, text) {
    if (text) this.progress.set(number, text);
    else this.progress.delete(number);
    if (this.byNumber.has(number)) this.schedule();
  }

  get loadedCount() { return this.rows.length; }
}
