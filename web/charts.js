// The experiment's charts (web/chart.js on canvas): score per trial with the best so far, score vs
// FLOPs ratio with the Pareto front, per-layer sparsity of the best trial.

import {Chart} from "./chart.js";
import {fmt} from "./dom.js";

const COLORS = {score: "#4c78a8", best: "#e45756", star: "#f2a900", trials: "#72b7b2", sparsity: "#54a24b"};
const MANY = 2000; // past this many points the markers shrink, so the cloud stays readable

/** Resolve in a new task, so the browser can handle input and paint first. */
function nextTask() {
  return globalThis.scheduler?.yield ? globalThis.scheduler.yield() : new Promise((resolve) => setTimeout(resolve, 0));
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

/** The best-so-far step line only needs the points where the best changes (and the last one). */
function steps(xs, ys) {
  const sx = [];
  const sy = [];
  for (let i = 0; i < xs.length; i++) {
    if (i === 0 || ys[i] !== ys[i - 1] || i === xs.length - 1) { sx.push(xs[i]); sy.push(ys[i]); }
  }
  return [sx, sy];
}

/** The three charts of one experiment page, redrawn from the snapshot's points as trials arrive. */
export class ExperimentCharts {
  /**
   * @param {{score: HTMLElement, pareto: HTMLElement, sparsity: HTMLElement}} els
   * @param {{metric: string, mode: string, onPick: (trial: number) => void}} opts
   */
  constructor(els, {metric, mode, onPick}) {
    Object.assign(this, {els, metric, mode});
    this.score = new Chart(els.score, {title: `${metric} per trial with the best so far`, onPick,
      x: {title: "trial", format: "int"}, y: {title: metric}});
    this.pareto = new Chart(els.pareto, {title: `${metric} versus FLOPs ratio with the Pareto front`, onPick,
      x: {title: "FLOPs ratio (compact / original)", format: "pct"}, y: {title: metric}});
    this.sparsity = new Chart(els.sparsity, {title: "Per-layer sparsity of the best trial", legend: false, zoom: false,
      x: {category: true}, y: {title: "share of weights pruned", format: "pct", range: [0, 1]}});
  }

  /** Draw all three, one per task (input is handled in between); resolves to the number of scored trials. */
  async draw(points, {best = null, bestTrial = null} = {}) {
    const scored = scoredPoints(points);
    this.drawScore(scored, best);
    await nextTask();
    this.drawPareto(scored);
    await nextTask();
    this.drawSparsity(bestTrial);
    return scored.x.length;
  }

  /** Ring trial `number` in the scatter charts (null: none). */
  select(number) {
    this.score.select(number);
    this.pareto.select(number);
  }

  destroy() {
    for (const chart of [this.score, this.pareto, this.sparsity]) chart.destroy();
  }

  drawScore({x, y}, best) {
    const m = this.metric;
    const [bx, by] = steps(x, bestSoFar(y, this.mode));
    const series = [
      {name: m, type: "points", x, y, ids: x, color: COLORS.score, size: x.length > MANY ? 4 : 7, opacity: 0.75,
        hover: (i) => `trial ${x[i]}\n${m} ${fmt.score(y[i])}`},
      {name: "best so far", type: "line", shape: "hv", x: bx, y: by, color: COLORS.best},
    ];
    const i = best === null || best === undefined ? -1 : x.indexOf(best);
    if (i >= 0) {
      series.push({name: `best (#${best})`, type: "points", symbol: "star", size: 14, x: [x[i]], y: [y[i]], ids: [best],
        color: COLORS.star, hover: () => `best: trial ${best}\n${m} ${fmt.score(y[i])}`});
    }
    this.score.update(series, {
      note: x.length ? "" : "No finished trial yet",
      summary: x.length ? `${x.length.toLocaleString()} finished trials; best so far ${fmt.score(by[by.length - 1])}` +
        (i >= 0 ? ` (trial ${best})` : "") : "",
    });
    this.els.score.dataset.points = String(x.length);
  }

  drawPareto({x: numbers, y: scores, flops}) {
    const m = this.metric;
    const keep = [];
    for (let i = 0; i < flops.length; i++) if (typeof flops[i] === "number" && Number.isFinite(flops[i])) keep.push(i);
    const fx = keep.map((i) => flops[i]);
    const fy = keep.map((i) => scores[i]);
    const fn = keep.map((i) => numbers[i]);
    const front = paretoFront(fx, fy, this.mode);
    const text = (label, xs, ys, ids) => (i) => `${label}trial ${ids[i]}\nFLOPs ${fmt.ratio(xs[i])}\n${m} ${fmt.score(ys[i])}`;
    const px = front.map((i) => fx[i]);
    const py = front.map((i) => fy[i]);
    const pn = front.map((i) => fn[i]);
    this.pareto.update([
      {name: "trials", type: "points", x: fx, y: fy, ids: fn, color: COLORS.trials, size: fx.length > MANY ? 4 : 7, opacity: 0.7,
        hover: text("", fx, fy, fn)},
      {name: "Pareto front", type: "line", shape: "hv", markers: true, size: 8, x: px, y: py, ids: pn, color: COLORS.best,
        hover: text("Pareto: ", px, py, pn)},
    ], {
      note: fx.length ? "" : "No finished trial yet",
      summary: fx.length ? `${fx.length.toLocaleString()} trials; ${front.length} on the Pareto front, from ` +
        `${fmt.ratio(px[0])} FLOPs at ${fmt.score(py[0])} to ${fmt.ratio(px[px.length - 1])} at ${fmt.score(py[py.length - 1])}` : "",
    });
    this.els.pareto.dataset.points = String(fx.length);
    this.els.pareto.dataset.front = String(front.length);
  }

  drawSparsity(trial) {
    const entries = Object.entries(trial?.achieved_sparsity || {}).filter(([, v]) => typeof v === "number");
    const names = entries.map(([k]) => k);
    const values = entries.map(([, v]) => v);
    this.sparsity.update([
      {name: "achieved sparsity", type: "bars", x: names, y: values, color: COLORS.sparsity,
        hover: (i) => `${names[i]}\n${fmt.ratio(values[i])} pruned`},
    ], {
      note: entries.length ? "" : trial ? "No sparsity recorded for this trial" : "No best trial yet",
      summary: entries.map(([k, v]) => `${k} ${fmt.ratio(v)}`).join(", "),
    });
    this.els.sparsity.dataset.points = String(entries.length);
  }
}
