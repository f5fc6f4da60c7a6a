// The experiment's charts (plotly.js): score per trial with the best so far, score vs FLOPs ratio
// with the Pareto front, per-layer sparsity of the best trial.

const CONFIG = {responsive: true, displaylogo: false, modeBarButtonsToRemove: ["select2d", "lasso2d", "autoScale2d"]};
const FONT = {family: "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size: 12};

/** plotly.js, loaded on first use (index.html preloads its bytes on experiment pages). */
export function plotly() {
  return window.__loadPlotly ? window.__loadPlotly() : Promise.reject(new Error("plotly.js is not available"));
}

let webgl = null;
/** Whether WebGL scatters can be drawn: the browser has WebGL and the plotly bundle has scattergl
 *  (partial bundles such as plotly-basic do not). */
function hasWebGL() {
  if (webgl === null) {
    try {
      const canvas = document.createElement("canvas");
      webgl = !!(canvas.getContext("webgl2") || canvas.getContext("webgl")) &&
        !(window.Plotly.validate([{type: "scattergl", x: [0], y: [0]}], {}) || []).some((e) => e.astr === "type");
    } catch { webgl = false; }
  }
  return webgl;
}

/** A centred note on an empty chart (plotly would draw bare axes). */
function emptyNote(empty, text) {
  return empty ? [{text, showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5, font: {size: 13, color: "#5d6677"}}] : [];
}

function layout(extra) {
  return {
    font: FONT, margin: {l: 56, r: 12, t: 28, b: 44}, hovermode: "closest", showlegend: true,
    legend: {orientation: "h", x: 0, y: 1.02, yanchor: "bottom", font: {size: 11}}, paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
    ...extra,
  };
}

/** Finished trials with a score, by number: {x: numbers, y: scores, flops: ratios}. */
export function scoredPoints(points) {
  const x = [];
  const y = [];
  const flops = [];
  for (let i = 0; i < points.number.length; i++) {
    const s = points.score[i];
    if (points.state[i] === "succeeded" && typeof s === "number" && Number.isFinite(s)) {
      x.push(points.number[i]);
      y.push(s);
      flops.push(points.flops_ratio[i]);
    }
  }
  return {x, y, flops};
}

/** Running best: max (maximize) or min (minimize); for "latest" the last score. */
export function bestSoFar(ys, mode) {
  const out = new Array(ys.length);
  let best = null;
  for (let i = 0; i < ys.length; i++) {
    const v = ys[i];
    if (best === null || mode === "latest" || (mode === "minimize" ? v < best : v > best)) best = v;
    out[i] = best;
  }
  return out;
}

/** The Pareto front of (flops ratio ↓, score ↑ or ↓): indices into the arrays, by flops ratio. */
export function paretoFront(flops, scores, mode) {
  const better = mode === "minimize" ? (a, b) => a < b : (a, b) => a > b;
  const idx = [];
  for (let i = 0; i < flops.length; i++) if (typeof flops[i] === "number" && Number.isFinite(flops[i])) idx.push(i);
  idx.sort((a, b) => flops[a] - flops[b] || (better(scores[a], scores[b]) ? -1 : better(scores[b], scores[a]) ? 1 : 0));
  const front = [];
  let best = null;
  for (const i of idx) {
    if (best === null || better(scores[i], best)) { front.push(i); best = scores[i]; }
  }
  return front;
}

// -- level of detail for SVG scatters ------------------------------------------------------------
//
// Without WebGL every marker is an SVG node. Past THIN_ABOVE points only one marker per occupied
// CELL_PX x CELL_PX pixel cell of the visible ranges is drawn (a real trial: hover and click still
// name it): the picture is the same, the node count is bounded by the plot's area. Zooming re-thins
// the markers for the new ranges, so every trial appears once the view is close enough.
const THIN_ABOVE = 2000;
const CELL_PX = 4;

function extent(values) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of values) { if (v < lo) lo = v; if (v > hi) hi = v; }
  if (!(lo <= hi)) return [0, 1];
  const pad = (hi - lo) * 0.04 || 0.5;
  return [lo - pad, hi + pad];
}

/** Indices of the points to draw: one per occupied pixel cell of the ranges (all when few). */
export function thinIndices(xs, ys, width, height, xRange = null, yRange = null) {
  const all = [];
  const [x0, x1] = xRange || extent(xs);
  const [y0, y1] = yRange || extent(ys);
  for (let i = 0; i < xs.length; i++) if (xs[i] >= x0 && xs[i] <= x1 && ys[i] >= y0 && ys[i] <= y1) all.push(i);
  if (all.length <= THIN_ABOVE) return all;
  const cx = Math.max(1, Math.floor(width / CELL_PX));
  const cy = Math.max(1, Math.floor(height / CELL_PX));
  const sx = cx / (x1 - x0 || 1);
  const sy = cy / (y1 - y0 || 1);
  const seen = new Uint8Array(cx * cy);
  const out = [];
  for (const i of all) {
    const k = Math.min(cx - 1, Math.floor((xs[i] - x0) * sx)) * cy + Math.min(cy - 1, Math.floor((ys[i] - y0) * sy));
    if (!seen[k]) { seen[k] = 1; out.push(i); }
  }
  return out;
}

function plotSize(el) {
  return [Math.max(100, (el.clientWidth || 400) - 70), Math.max(80, (el.clientHeight || 280) - 75)];
}

/** Marker trace data for (xs, ys, ids): all points with WebGL, else the thinned ones. */
function markerData(el, xs, ys, ids, ranges = {}) {
  const gl = xs.length > THIN_ABOVE && hasWebGL();
  const keep = gl ? null : thinIndices(xs, ys, ...plotSize(el), ranges.x, ranges.y);
  const pick = (arr) => (keep ? keep.map((i) => arr[i]) : arr);
  el.dataset.drawn = String(keep ? keep.length : xs.length);
  return {type: gl ? "scattergl" : "scatter", x: pick(xs), y: pick(ys), customdata: pick(ids)};
}

/** Re-thin trace 0 when the person zooms or pans (SVG mode only). */
function bindZoom(el, Plotly) {
  if (el.dataset.zoomBound) return;
  el.dataset.zoomBound = "1";
  el.on("plotly_relayout", (ev) => {
    const full = el.__full;
    if (!full || full.gl) return;
    const range = (axis) => (ev[`${axis}axis.range[0]`] !== undefined ? [ev[`${axis}axis.range[0]`], ev[`${axis}axis.range[1]`]]
      : ev[`${axis}axis.autorange`] ? null : (el.layout[`${axis}axis`].range || null));
    if (!Object.keys(ev).some((k) => k.startsWith("xaxis") || k.startsWith("yaxis"))) return;
    const data = markerData(el, full.x, full.y, full.ids, {x: range("x"), y: range("y")});
    Plotly.restyle(el, {x: [data.x], y: [data.y], customdata: [data.customdata]}, [0]);
    el.dispatchEvent(new CustomEvent("ps:thinned"));
  });
}

/** The best-so-far step line only needs the points where the best changes (and the last one). */
function steps(xs, ys) {
  const sx = [];
  const sy = [];
  for (let i = 0; i < xs.length; i++) {
    if (i === 0 || ys[i] !== ys[i - 1] || i === xs.length - 1) { sx.push(xs[i]); sy.push(ys[i]); }
  }
  return [sx, sy];
}

export async function drawScoreChart(el, points, {mode = "maximize", metric = "score", best = null} = {}) {
  const Plotly = await plotly();
  const {x, y} = scoredPoints(points);
  const markers = markerData(el, x, y, x);
  el.__full = {x, y, ids: x, gl: markers.type === "scattergl"};
  const [bx, by] = steps(x, bestSoFar(y, mode));
  const traces = [
    {...markers, mode: "markers", name: metric, marker: {size: x.length > THIN_ABOVE ? 4 : 7, color: "#4c78a8", opacity: 0.75},
      hovertemplate: `trial %{x}<br>${metric} %{y:.4f}<extra></extra>`},
    {type: "scatter", mode: "lines", name: "best so far", x: bx, y: by, line: {shape: "hv", color: "#e45756", width: 2},
      hoverinfo: "skip"},
  ];
  if (best !== null && best !== undefined) {
    const i = x.indexOf(best);
    if (i >= 0) traces.push({type: "scatter", mode: "markers", name: `best (#${best})`, x: [x[i]], y: [y[i]], marker: {size: 13, symbol: "star", color: "#f2a900", line: {width: 1, color: "#333"}}, hovertemplate: `best: trial %{x}<extra></extra>`});
  }
  await Plotly.react(el, traces, layout({
    xaxis: {title: {text: "trial"}, zeroline: false}, yaxis: {title: {text: metric}, zeroline: false},
    annotations: emptyNote(!x.length, "No finished trial yet"),
  }), CONFIG);
  bindZoom(el, Plotly);
  el.dataset.points = String(x.length);
  return x.length;
}

export async function drawParetoChart(el, points, {mode = "maximize", metric = "score", onPick = null} = {}) {
  const Plotly = await plotly();
  const {x: numbers, y: scores, flops} = scoredPoints(points);
  const keep = [];
  for (let i = 0; i < flops.length; i++) if (typeof flops[i] === "number" && Number.isFinite(flops[i])) keep.push(i);
  const fx = keep.map((i) => flops[i]);
  const fy = keep.map((i) => scores[i]);
  const fn = keep.map((i) => numbers[i]);
  const front = paretoFront(fx, fy, mode);
  const markers = markerData(el, fx, fy, fn);
  el.__full = {x: fx, y: fy, ids: fn, gl: markers.type === "scattergl"};
  await Plotly.react(el, [
    {...markers, mode: "markers", name: "trials", marker: {size: fx.length > THIN_ABOVE ? 4 : 7, color: "#72b7b2", opacity: 0.7},
      hovertemplate: `trial %{customdata}<br>FLOPs %{x:.1%}<br>${metric} %{y:.4f}<extra></extra>`},
    {type: "scatter", mode: "lines+markers", name: "Pareto front", x: front.map((i) => fx[i]), y: front.map((i) => fy[i]), customdata: front.map((i) => fn[i]),
      line: {shape: "hv", color: "#e45756", width: 2}, marker: {size: 8, color: "#e45756"},
      hovertemplate: `Pareto: trial %{customdata}<br>FLOPs %{x:.1%}<br>${metric} %{y:.4f}<extra></extra>`},
  ], layout({
    xaxis: {title: {text: "FLOPs ratio (compact / original)"}, tickformat: ".0%", zeroline: false},
    yaxis: {title: {text: metric}, zeroline: false},
    annotations: emptyNote(!fx.length, "No finished trial yet"),
  }), CONFIG);
  bindZoom(el, Plotly);
  if (onPick && !el.dataset.bound) {
    el.dataset.bound = "1";
    el.on("plotly_click", (ev) => {
      const p = ev.points && ev.points[0];
      if (p && p.customdata !== undefined) onPick(Number(p.customdata));
    });
  }
  el.dataset.points = String(fx.length);
  el.dataset.front = String(front.length);
  return fx.length;
}

export async function drawSparsityChart(el, trial) {
  const Plotly = await plotly();
  const entries = Object.entries(trial?.achieved_sparsity || {}).filter(([, v]) => typeof v === "number");
  await Plotly.react(el, [{
    type: "bar", name: "achieved sparsity", x: entries.map(([k]) => k), y: entries.map(([, v]) => v),
    marker: {color: "#54a24b"}, hovertemplate: "%{x}<br>%{y:.1%} pruned<extra></extra>",
  }], layout({
    showlegend: false, xaxis: {type: "category", tickangle: entries.length > 8 ? -45 : 0, automargin: true},
    yaxis: {title: {text: "share of weights pruned"}, tickformat: ".0%", range: [0, 1]},
    annotations: emptyNote(!entries.length, trial ? "No sparsity recorded for this trial" : "No best trial yet"),
  }), CONFIG);
  el.dataset.points = String(entries.length);
  return entries.length;
}

export function purge(el) {
  if (window.Plotly) window.Plotly.purge(el);
}
