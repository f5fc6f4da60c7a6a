// A small canvas chart: scatter points, step or straight lines and bars on a linear or category x
// axis, with nice ticks, a legend that hides series, a hover tooltip, click to pick a point, box
// zoom (double-click or "Reset zoom" undoes it), keyboard navigation, resize and HiDPI.
//
// Why not plotly.js: on a first visit the browser runs plotly's 4.6 MiB bundle in one task of
// 1.1-2 s (headless Chromium, 2-core machine), so the page froze for that long after its table was
// usable. This module (with chart_paint.js) is ~28 KB and draws 10,000 points in a few milliseconds
// (benchmarks/bench_ui.py; web/README.md has the figures).

import {categoryTicks, drawAxes, drawSeries, FONT_PX, niceTicks, ring, tickLabel} from "./chart_paint.js";
import {h} from "./dom.js";

const HOVER_PX = 10; // a point this close to the pointer is hovered
const DRAG_PX = 5; // a shorter drag is a click
const CELL_PX = 16; // cell of the hit-test grid
const PAD = 0.04; // autorange padding, as a share of the data's span
const CHARTS = new WeakMap(); // element → its chart, for Chart.of

/**
 * @typedef {object} Series
 * @property {string} name legend and announcement name
 * @property {"points"|"line"|"bars"} type
 * @property {Array<number|string>} x numbers, or category names for bars
 * @property {number[]} y
 * @property {string} color
 * @property {number[]} [ids] what `onPick` receives for point i (a trial number)
 * @property {number} [size] marker diameter in px (points, and a line's vertices)
 * @property {"circle"|"star"} [symbol]
 * @property {number} [opacity]
 * @property {boolean} [markers] a line also draws its vertices
 * @property {"hv"|"linear"} [shape] "hv": a step line, horizontal first
 * @property {(i: number) => string} [hover] tooltip text of point i ("\n" between lines); none: not hoverable
 * @property {boolean} [legend] false: no legend entry
 */

export class Chart {
  /**
   * @param {HTMLElement} el the chart's box (sized by CSS); the chart fills it
   * @param {{title: string, x?: object, y?: object, onPick?: (id: number) => void, legend?: boolean, zoom?: boolean}} opts
   *   axes: {title, format: "num"|"int"|"pct", range?: [lo, hi] fixed, category?: true (x only)}
   */
  constructor(el, {title, x = {}, y = {}, onPick = null, legend = true, zoom = true}) {
    Object.assign(this, {el, title, axes: {x, y}, onPick, zoomable: zoom && !x.category});
    this.series = [];
    this.updated = false; // update() was called: there is something to draw
    this.note = "";
    this.hidden = new Set(); // names of the series switched off in the legend
    this.view = null; // {x: [lo, hi], y: [lo, hi]} after a zoom; null: fit the data
    this.frame = null; // the last draw's plot rectangle and ranges
    this.hits = null; // the hit-test grid of the last draw, built on the first hover
    this.order = new Map(); // keyboard order of each series' points in view (built on first use)
    this.hover = null; // {s, i, keyboard}: the point under the pointer or the keyboard cursor
    this.pointer = null;
    this.drag = null;
    this.selected = null; // id of the point ringed by select()
    this.size = ""; // the plot size of the last draw
    this.legendKey = "";
    this.build(legend);
    // nothing is drawn before the first update(): empty axes would only cost time on the way to the data
    this.resizer = new ResizeObserver(() => {
      if (this.updated && this.size !== `${this.plot.clientWidth}x${this.plot.clientHeight}`) this.draw();
    });
    this.resizer.observe(this.plot);
    CHARTS.set(el, this);
  }

  /** The chart drawn in element `el` (undefined if none), e.g. to find where a trial is drawn. */
  static of(el) {
    return CHARTS.get(el);
  }

  build(legend) {
    const hint = h("p", {class: "sr-only", id: `${this.el.id}-hint`},
      "Arrow keys move between points, up and down between series; Enter opens the trial.",
      this.zoomable ? " Drag to zoom in, double-click to zoom out." : "");
    this.legendEl = legend ? h("div", {class: "chart-legend", role: "group", "aria-label": "Series"}) : null;
    this.resetBtn = h("button", {type: "button", class: "btn small chart-reset", hidden: true, onclick: () => this.resetZoom()}, "Reset zoom");
    this.base = h("canvas", {"aria-hidden": "true"});
    this.overlay = h("canvas", {class: "chart-overlay", "aria-hidden": "true"});
    this.tip = h("div", {class: "chart-tip", hidden: true, "aria-hidden": "true"});
    this.live = h("div", {class: "sr-only", "aria-live": "polite"});
    this.plot = h("div", {class: "chart-plot", tabindex: "0", role: "group", "aria-roledescription": "chart",
      "aria-describedby": hint.id}, this.base, this.overlay, this.tip, this.resetBtn);
    this.el.append(...(legend ? [this.legendEl] : []), this.plot, hint, this.live);
    const on = (type, fn) => this.plot.addEventListener(type, fn);
    on("pointermove", (ev) => this.onMove(ev));
    on("pointerdown", (ev) => this.onDown(ev));
    on("pointerup", (ev) => this.onUp(ev));
    on("pointerleave", () => { if (!this.drag) { this.pointer = null; this.setHover(null); } });
    on("dblclick", () => this.resetZoom());
    on("keydown", (ev) => this.onKey(ev));
    on("blur", () => { if (this.hover?.keyboard) this.setHover(null); });
  }

  /** Replace the series and redraw (the zoom and hidden series are kept). */
  update(series, {note = "", summary = ""} = {}) {
    // the keyboard cursor stays on its trial (live updates insert points before it)
    const cursor = this.hover?.keyboard ? this.series[this.hover.s].ids?.[this.hover.i] : undefined;
    const i = cursor === undefined ? -1 : series[this.hover.s]?.ids?.indexOf(cursor) ?? -1;
    this.hover = i >= 0 ? {...this.hover, i} : null;
    this.series = series;
    this.updated = true;
    this.note = note;
    this.plot.setAttribute("aria-label", `${this.title}. ${summary || note}`);
    this.renderLegend();
    this.draw();
  }

  /** Ring the point whose id is `id` (null: none), e.g. the trial open in the table. */
  select(id) {
    this.selected = id;
    this.drawOverlay();
  }

  resetZoom() {
    if (!this.view) return;
    this.view = null;
    this.resetBtn.hidden = true;
    this.draw();
    this.announce("Zoom reset");
  }

  /** Where the point with `id` is drawn, in client coordinates (null if it is not in view). */
  position(id) {
    const at = this.find(id);
    if (!at) return null;
    const box = this.plot.getBoundingClientRect();
    return {x: box.left + at.x, y: box.top + at.y};
  }

  destroy() {
    this.resizer.disconnect();
    CHARTS.delete(this.el);
  }

  /** The legend's buttons, rebuilt only when a name, colour or visibility changed (no relayout per update). */
  renderLegend() {
    if (!this.legendEl) return;
    const entries = this.series.filter((s) => s.legend !== false);
    const key = JSON.stringify(entries.map((s) => [s.name, s.type, s.color, this.hidden.has(s.name)]));
    if (key === this.legendKey) return;
    this.legendKey = key;
    const keys = entries.map((s) => {
      const on = !this.hidden.has(s.name);
      return h("button", {type: "button", class: "chart-key", "aria-pressed": String(on), title: on ? "Hide" : "Show",
        onclick: () => { on ? this.hidden.add(s.name) : this.hidden.delete(s.name); this.renderLegend(); this.draw(); }},
      h("span", {class: `chart-swatch ${s.type}`, style: {background: s.color}}), s.name);
    });
    this.legendEl.replaceChildren(...keys);
  }

  visible() {
    return this.series.map((s, index) => ({s, index})).filter(({s}) => !this.hidden.has(s.name));
  }

  range(axis) {
    const opt = this.axes[axis];
    if (this.view) return this.view[axis];
    if (opt.range) return opt.range;
    if (opt.category) return [-0.5, Math.max(1, this.categories().length) - 0.5];
    let lo = Infinity;
    let hi = -Infinity;
    for (const {s} of this.visible()) {
      for (const v of s[axis]) if (Number.isFinite(v)) { if (v < lo) lo = v; if (v > hi) hi = v; }
    }
    if (!(lo <= hi)) return [0, 1];
    const pad = (hi - lo) * PAD || Math.abs(lo) * 0.05 || 0.5;
    return [lo - pad, hi + pad];
  }

  categories() {
    return this.series.find((s) => s.type === "bars")?.x || [];
  }

  /** Draw everything (nothing while the plot has no size: not laid out, or hidden). */
  draw() {
    const w = this.plot.clientWidth;
    const ht = this.plot.clientHeight;
    this.size = `${w}x${ht}`;
    this.order.clear();
    if (this.hover && this.hidden.has(this.series[this.hover.s]?.name)) this.hover = null;
    if (!w || !ht) return;
    const ctx = this.resizeCanvas(this.base, w, ht);
    const style = getComputedStyle(this.el);
    const ink = {text: style.getPropertyValue("--muted").trim() || "#5d6677", grid: style.getPropertyValue("--line").trim() || "#dde1e8",
      font: `${FONT_PX}px ${style.fontFamily}`};
    ctx.font = ink.font;
    const f = this.layout(ctx, w, ht);
    this.frame = f;
    drawAxes(ctx, f, this.axes, ink);
    ctx.save();
    ctx.beginPath();
    ctx.rect(f.l, f.t, f.r - f.l, f.b - f.t);
    ctx.clip();
    this.scratch ||= document.createElement("canvas");
    for (const {s} of this.visible()) drawSeries(ctx, s, f, this.scratch);
    ctx.restore();
    if (this.note) {
      ctx.fillStyle = ink.text;
      ctx.font = `13px ${style.fontFamily}`;
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.fillText(this.note, (f.l + f.r) / 2, (f.t + f.b) / 2);
    }
    this.hits = null;
    if (this.pointer && !this.hover?.keyboard) this.hover = this.nearest(this.pointer.x, this.pointer.y);
    this.drawOverlay();
  }

  resizeCanvas(canvas, w, ht) {
    const dpr = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(ht * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(ht * dpr);
      canvas.style.width = `${w}px`;
      canvas.style.height = `${ht}px`;
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, ht);
    return ctx;
  }

  /** The plot rectangle, ranges, scales and ticks for a w × ht canvas: margins fit the tick labels. */
  layout(ctx, w, ht) {
    const {x: xo, y: yo} = this.axes;
    const [y0, y1] = this.range("y");
    const [x0, x1] = this.range("x");
    const yt = niceTicks(y0, y1, Math.max(2, Math.round(ht / 50)), yo.format === "int");
    const yLabels = yt.values.map((v) => tickLabel(v, yt.step, yo.format));
    const r = w - 12;
    const f = {w, r, t: 8, x: [x0, x1], y: [y0, y1], yTicks: yt.values.map((v, i) => [v, yLabels[i]])};
    f.l = Math.ceil(Math.max(0, ...yLabels.map((s) => ctx.measureText(s).width))) + 10 + (yo.title ? 18 : 0);
    if (xo.category) {
      const names = this.categories();
      Object.assign(f, categoryTicks(ctx, names, (r - f.l) / Math.max(1, names.length)));
      // a rotated first label reaches left of its bar: keep it on the canvas
      if (f.rotated && f.xTicks.length) f.l = Math.max(f.l, Math.ceil(ctx.measureText(f.xTicks[0][1]).width * Math.SQRT1_2) - 6);
    } else {
      const xt = niceTicks(x0, x1, Math.max(3, Math.round((r - f.l) / 70)), xo.format === "int");
      f.xTicks = xt.values.map((v) => [v, tickLabel(v, xt.step, xo.format)]);
      f.xLabelHeight = FONT_PX + 8;
    }
    f.b = ht - f.xLabelHeight - (xo.title ? 18 : 4);
    f.sx = (v) => f.l + ((v - x0) / (x1 - x0 || 1)) * (f.r - f.l);
    f.sy = (v) => f.b - ((v - y0) / (y1 - y0 || 1)) * (f.b - f.t);
    f.ix = (px) => x0 + ((px - f.l) / (f.r - f.l)) * (x1 - x0);
    f.iy = (py) => y0 + ((f.b - py) / (f.b - f.t)) * (y1 - y0);
    return f;
  }

  /** A grid of the hoverable points in view, by CELL_PX cell, and the bars' columns. */
  index(f) {
    const cols = Math.ceil((f.r - f.l) / CELL_PX) + 1;
    const cells = new Map();
    const points = [];
    let bars = null;
    for (const {s, index} of this.visible()) {
      if (!s.hover) continue;
      if (s.type === "bars") { bars = index; continue; }
      for (let i = 0; i < s.y.length; i++) {
        const px = f.sx(s.x[i]);
        const py = f.sy(s.y[i]);
        if (!(px >= f.l - 1 && px <= f.r + 1 && py >= f.t - 1 && py <= f.b + 1)) continue;
        const key = Math.floor((py - f.t) / CELL_PX) * cols + Math.floor((px - f.l) / CELL_PX);
        if (!cells.has(key)) cells.set(key, []);
        cells.get(key).push(points.length);
        points.push({s: index, i, x: px, y: py});
      }
    }
    return {cells, cols, points, bars};
  }

  /** The hoverable point nearest to (px, py) within HOVER_PX (a later series wins a tie), or the bar under it. */
  nearest(px, py) {
    const f = this.frame;
    if (!f) return null;
    this.hits ||= this.index(f);
    const hits = this.hits;
    if (px < f.l - HOVER_PX || px > f.r + HOVER_PX || py < f.t - HOVER_PX || py > f.b + HOVER_PX) return null;
    if (hits.bars !== null) {
      const i = Math.round(f.ix(px));
      return i >= 0 && i < this.series[hits.bars].y.length ? {s: hits.bars, i} : null;
    }
    const cx = Math.floor((px - f.l) / CELL_PX);
    const cy = Math.floor((py - f.t) / CELL_PX);
    let best = null;
    let bestD = HOVER_PX * HOVER_PX;
    for (let y = cy - 1; y <= cy + 1; y++) {
      for (let x = cx - 1; x <= cx + 1; x++) {
        if (x < 0 || x >= hits.cols) continue;
        for (const k of hits.cells.get(y * hits.cols + x) || []) {
          const p = hits.points[k];
          const d = (p.x - px) ** 2 + (p.y - py) ** 2;
          if (d < bestD || (d === bestD && best && p.s > best.s)) { best = p; bestD = d; }
        }
      }
    }
    return best && {s: best.s, i: best.i};
  }

  /** The pixel position of series s's point i (bars: the top of the bar). */
  at(s, i) {
    const series = this.series[s];
    const x = series.type === "bars" ? i : series.x[i];
    return {x: this.frame.sx(x), y: this.frame.sy(series.y[i])};
  }

  find(id) {
    if (id === null || id === undefined || !this.frame) return null;
    for (const {s, index} of this.visible()) {
      const i = s.ids ? s.ids.indexOf(id) : -1;
      if (i >= 0) {
        const p = this.at(index, i);
        const f = this.frame;
        return p.x >= f.l && p.x <= f.r && p.y >= f.t && p.y <= f.b ? p : null;
      }
    }
    return null;
  }

  /** The hover ring, the selected point's ring, the zoom box and the tooltip. */
  drawOverlay() {
    const f = this.frame;
    if (!f) return;
    const ctx = this.resizeCanvas(this.overlay, this.plot.clientWidth, this.plot.clientHeight);
    const chosen = this.find(this.selected);
    if (chosen) ring(ctx, chosen, 7, "#18203a", 2);
    const hov = this.hover;
    if (hov) {
      const s = this.series[hov.s];
      const p = this.at(hov.s, hov.i);
      if (s.type === "bars") {
        const half = ((f.r - f.l) / this.categories().length) * 0.4;
        ctx.strokeStyle = "#18203a";
        ctx.lineWidth = 2;
        ctx.strokeRect(p.x - half, p.y, half * 2, f.sy(0) - p.y);
      } else {
        ring(ctx, p, Math.max(5, (s.size || 6) / 2 + 3), "#18203a", 1.5);
      }
      this.showTip(s.hover(hov.i), p);
    } else {
      this.tip.hidden = true;
    }
    if (this.drag) {
      const d = this.drag;
      ctx.fillStyle = "rgba(47, 95, 208, 0.12)";
      ctx.strokeStyle = "rgba(47, 95, 208, 0.8)";
      ctx.lineWidth = 1;
      const [x0, x1] = this.dragSpan(d.x0, d.x1, f.l, f.r);
      const [y0, y1] = this.dragSpan(d.y0, d.y1, f.t, f.b);
      ctx.fillRect(x0, y0, x1 - x0, y1 - y0);
      ctx.strokeRect(x0 + 0.5, y0 + 0.5, x1 - x0 - 1, y1 - y0 - 1);
    }
    this.plot.style.cursor = hov && this.series[hov.s].ids && this.onPick ? "pointer" : "crosshair";
  }

  /** A drag's extent on one axis: the whole axis when the drag is shorter than DRAG_PX along it. */
  dragSpan(a, b, lo, hi) {
    if (Math.abs(b - a) < DRAG_PX) return [lo, hi];
    return [Math.max(lo, Math.min(a, b)), Math.min(hi, Math.max(a, b))];
  }

  showTip(text, p) {
    this.tip.textContent = text;
    this.tip.hidden = false;
    const w = this.plot.clientWidth;
    const tw = this.tip.offsetWidth;
    const th = this.tip.offsetHeight;
    const left = p.x + 12 + tw > w ? Math.max(0, p.x - 12 - tw) : p.x + 12;
    const top = Math.min(Math.max(0, p.y - th - 8), this.plot.clientHeight - th);
    this.tip.style.transform = `translate(${Math.round(left)}px, ${Math.round(top)}px)`;
  }

  setHover(hit, keyboard = false) {
    const same = hit && this.hover && hit.s === this.hover.s && hit.i === this.hover.i;
    this.hover = hit ? {...hit, keyboard} : null;
    if (keyboard && hit) this.announce(this.series[hit.s].hover(hit.i).replaceAll("\n", ", "));
    if (!same || keyboard) this.drawOverlay();
  }

  announce(text) {
    this.live.textContent = text;
  }

  local(ev) {
    const box = this.plot.getBoundingClientRect();
    return {x: ev.clientX - box.left, y: ev.clientY - box.top};
  }

  onMove(ev) {
    const p = this.local(ev);
    this.pointer = p;
    if (this.drag) {
      Object.assign(this.drag, {x1: p.x, y1: p.y});
      this.drawOverlay();
    } else {
      this.setHover(this.nearest(p.x, p.y));
    }
  }

  onDown(ev) {
    const f = this.frame;
    const p = this.local(ev);
    if (ev.button !== 0 || ev.target === this.resetBtn || !f || !this.zoomable || p.x < f.l || p.x > f.r || p.y < f.t || p.y > f.b) return;
    this.drag = {x0: p.x, y0: p.y, x1: p.x, y1: p.y};
    this.plot.setPointerCapture(ev.pointerId);
  }

  onUp(ev) {
    const d = this.drag;
    this.drag = null;
    const p = this.local(ev);
    if (ev.target === this.resetBtn) return;
    if (d && (Math.abs(p.x - d.x0) >= DRAG_PX || Math.abs(p.y - d.y0) >= DRAG_PX)) {
      this.zoomTo({...d, x1: p.x, y1: p.y});
      return;
    }
    if (d) this.drawOverlay();
    this.pick(this.nearest(p.x, p.y));
  }

  zoomTo(d) {
    const f = this.frame;
    const [x0, x1] = this.dragSpan(d.x0, d.x1, f.l, f.r);
    const [y0, y1] = this.dragSpan(d.y0, d.y1, f.t, f.b);
    this.view = {x: [f.ix(x0), f.ix(x1)], y: [f.iy(y1), f.iy(y0)]};
    this.resetBtn.hidden = false;
    this.draw();
    this.announce("Zoomed in; double-click or Reset zoom to see everything");
  }

  pick(hit) {
    const ids = hit && this.series[hit.s].ids;
    if (ids && this.onPick) this.onPick(ids[hit.i]);
  }

  /** The indices of series s's points in view, by x then y (the keyboard's order). */
  keyOrder(s) {
    if (!this.order.has(s)) {
      const f = this.frame;
      const series = this.series[s];
      const idx = [];
      for (let i = 0; i < series.y.length; i++) {
        const p = this.at(s, i);
        if (p.x >= f.l - 1 && p.x <= f.r + 1 && p.y >= f.t - 1 && p.y <= f.b + 1) idx.push(i);
      }
      if (series.type !== "bars") idx.sort((a, b) => series.x[a] - series.x[b] || series.y[a] - series.y[b]);
      this.order.set(s, idx);
    }
    return this.order.get(s);
  }

  onKey(ev) {
    if (!this.frame || ev.target !== this.plot) return;
    const keys = this.visible().filter(({s}) => s.hover && s.y.length).map(({index}) => index);
    if (ev.key === "Escape") { this.setHover(null); return; }
    if ((ev.key === "Enter" || ev.key === " ") && this.hover) { ev.preventDefault(); this.pick(this.hover); return; }
    if (!keys.length || !["ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown", "Home", "End"].includes(ev.key)) return;
    ev.preventDefault();
    let s = this.hover && keys.includes(this.hover.s) ? this.hover.s : keys[0];
    let order = this.keyOrder(s);
    let pos = this.hover ? order.indexOf(this.hover.i) : -1;
    if (ev.key === "ArrowUp" || ev.key === "ArrowDown") {
      const x = this.hover ? this.at(this.hover.s, this.hover.i).x : this.frame.l;
      s = keys[(keys.indexOf(s) + (ev.key === "ArrowDown" ? 1 : keys.length - 1)) % keys.length];
      order = this.keyOrder(s);
      pos = closestTo(order, (i) => Math.abs(this.at(s, i).x - x));
    } else {
      const last = order.length - 1;
      pos = {ArrowLeft: pos - 1, ArrowRight: pos + 1, Home: 0, End: last}[ev.key];
      pos = Math.min(last, Math.max(0, pos));
    }
    if (pos >= 0 && order.length) this.setHover({s, i: order[pos]}, true);
  }
}

function closestTo(order, distance) {
  let best = -1;
  let bestD = Infinity;
  order.forEach((i, pos) => { const d = distance(i); if (d < bestD) { best = pos; bestD = d; } });
  return best;
}
