// The experiment page: header and actions, best model and downloads, charts, the trial table and a
// trial's details, all kept live by the experiment's event stream.

import {api, auth, downloadWithToken} from "./api.js";
import {ExperimentCharts} from "./charts.js";
import {describeError, errorState, fill, fmt, h, loading, plannedTrials, stateBadge, TERMINAL, throttle, toast} from "./dom.js";
import {openEventStream} from "./sse.js";
import {TrialDetail} from "./trial_detail.js";
import {TrialTable} from "./trials_table.js";

const FORMATS = [
  {format: "pt2", label: ".pt2", title: "torch.export program (torch.export.load)"},
  {format: "onnx", label: "ONNX", title: "ONNX model"},
  {format: "safetensors", label: "safetensors", title: "compact model weights (safetensors)"},
  {format: "masks", label: "masks", title: "pruning masks (safetensors)"},
];
const CANCELLABLE = new Set(["queued", "running"]);
const RESUMABLE = new Set(["cancelled", "failed"]);
const MAX_ACTIVITY = 200;

function mark(name) {
  try { performance.mark(name); } catch { /* old browsers */ }
}

export function mountExperiment(container, {id, navigate}) {
  const experimentId = Number(id);
  let alive = true;
  let exp = null;
  let points = null;
  let best = null;
  let stream = null;
  let charts = null;
  const marks = {table: false, charts: false};

  const els = {
    head: h("div", {class: "exp-head"}),
    actions: h("div", {class: "exp-actions", role: "group", "aria-label": "Experiment actions"}),
    bestCard: h("section", {class: "card best-card", "aria-labelledby": "best-title"}),
    charts: {
      score: h("div", {class: "chart", id: "chart-score"}),
      pareto: h("div", {class: "chart", id: "chart-pareto"}),
      sparsity: h("div", {class: "chart", id: "chart-sparsity"}),
    },
    chartNote: h("p", {class: "muted small chart-note", role: "status"}),
    live: h("span", {class: "live-dot", role: "status", "aria-live": "polite"}),
    activity: h("ol", {class: "activity", "aria-label": "Activity"}),
  };
  const table = new TrialTable({experimentId, onSelect: (n) => { detail.open(n); charts?.select(n); }});
  const detail = new TrialDetail({experimentId, onOpenTrial: (n) => table.select(n), onClose: () => {
    table.selected = null;
    table.render();
    charts?.select(null);
  }});

  fill(container, h("section", {class: "page experiment-page", id: "experiment-page", dataset: {experimentId: String(experimentId)}},
    h("div", {id: "exp-body"}, loading("Loading the experiment…"))));

  async function load() {
    const body = container.querySelector("#exp-body");
    // In parallel: the experiment and the first page of trials (the table shows first), the best
    // trial, and the snapshot (every trial's point for the charts + the event id to stream from).
    const tableReady = table.reload().catch((err) => err);
    const snapReady = api(`/ui/experiments/${experimentId}/snapshot`);
    snapReady.catch(() => {});
    const bestReady = loadBest().catch((err) => err);
    try {
      exp = await api(`/experiments/${experimentId}`);
    } catch (err) {
      if (!alive) return;
      fill(body, err.status === 404
        ? h("div", {class: "state-block empty"}, h("p", {class: "state-title"}, `Experiment ${experimentId} does not exist.`),
          h("a", {class: "btn", href: "/", "data-link": true}, "Back to the list"))
        : errorState(err, () => load()));
      return;
    }
    if (!alive) return;
    document.title = `${exp.name} · prunesearch`;
    const objective = exp.spec?.objective || {};
    const metric = objective.metric || "score";
    fill(body,
      h("div", {class: "page-head"}, els.head, els.actions),
      h("div", {class: "exp-top"}, els.bestCard,
        h("section", {class: "card charts-card", "aria-label": "Charts", "aria-busy": "true"},
          h("div", {class: "charts"},
            h("figure", {class: "chart-box"}, h("figcaption", {id: "cap-score"}, `${metric} per trial, best so far`), els.charts.score),
            h("figure", {class: "chart-box"}, h("figcaption", {id: "cap-pareto"}, `${metric} vs FLOPs ratio, Pareto front`), els.charts.pareto),
            h("figure", {class: "chart-box"}, h("figcaption", {id: "cap-sparsity"}, "Per-layer sparsity of the best trial"), els.charts.sparsity)),
          els.chartNote)),
      h("div", {class: "exp-main"},
        h("section", {class: "card table-card", "aria-labelledby": "trials-title"},
          h("div", {class: "card-head"}, h("h2", {id: "trials-title"}, "Trials"), els.live),
          table.el),
        detail.el),
      h("section", {class: "card activity-card", "aria-labelledby": "activity-title"},
        h("h2", {id: "activity-title"}, "Activity"), els.activity));
    els.chartNote.textContent = "Loading the charts…";
    charts = new ExperimentCharts(els.charts, {metric, mode: objective.best_result_mode || "maximize", onPick: (n) => table.select(n)});
    renderHead();
    renderBest();
    const tableResult = await tableReady;
    if (!alive) return;
    table.render();
    if (tableResult instanceof Error) toast(`Could not load the trials: ${describeError(tableResult)}`, "error");
    mark("ps:table");
    marks.table = true;
    const bestResult = await bestReady;
    if (bestResult instanceof Error) toast(`Could not load the best trial: ${describeError(bestResult)}`, "error");
    let snap;
    try {
      snap = await snapReady;
    } catch (err) {
      if (alive) els.chartNote.textContent = `Charts and live updates unavailable: ${describeError(err)}`;
      return;
    }
    if (!alive) return;
    // the snapshot was read after its last event: it is the state the stream continues from
    exp = snap.experiment;
    points = snap.points;
    renderHead();
    renderBest();
    reconcile();
    await drawCharts();
    container.querySelector(".charts-card")?.removeAttribute("aria-busy");
    if (!alive) return;
    stream = openEventStream(`/api/v1/experiments/${experimentId}/events?after=${snap.last_event_id}`, {
      after: snap.last_event_id, onEvent, onEnd, onStatus: liveStatus,
    });
    if (TERMINAL.has(exp.state)) liveStatus("ended");
  }

  /** Rows read before the snapshot's event id may have changed since: re-read those that differ. */
  function reconcile() {
    const stateOf = new Map();
    for (let i = 0; i < points.number.length; i++) stateOf.set(points.number[i], points.state[i]);
    for (const row of table.rows) {
      if (stateOf.has(row.number) && stateOf.get(row.number) !== row.state) fillTrial(row.number);
    }
    if (table.count !== points.number.length) {
      table.count = Math.max(points.number.length, table.rows.length);
      table.render();
    }
  }

  async function loadBest() {
    try {
      best = await api(`/experiments/${experimentId}/best`);
    } catch (err) {
      if (err.status !== 404) throw err;
      best = null;
    }
    return best;
  }

  function liveStatus(status) {
    const text = {live: "● live", reconnecting: "○ reconnecting…", ended: "finished", gone: "deleted", error: "not live"}[status] || status;
    els.live.textContent = text;
    els.live.dataset.status = status;
  }

  function renderHead() {
    const planned = plannedTrials(exp);
    const progress = planned ? `${exp.n_trials} / ${planned} trials` : `${exp.n_trials} trials`;
    fill(els.head, 
      h("h1", {}, exp.name, " ", h("span", {class: "muted small"}, `#${exp.id}`)),
      h("div", {class: "exp-meta"}, stateBadge(exp.state),
        h("span", {}, exp.algorithm), h("span", {class: "mono small"}, exp.model.replace(/^search\.zoo:/, "")),
        h("span", {id: "exp-progress"}, progress),
        planned ? h("progress", {max: String(planned), value: String(Math.min(exp.n_trials, planned)), "aria-label": progress}) : null,
        h("span", {class: "muted small", title: fmt.date(exp.created_at)}, `created ${fmt.ago(exp.created_at)}`),
        exp.cancel_requested && !TERMINAL.has(exp.state) ? h("span", {class: "badge state-cancelling"}, "cancel requested") : null),
      exp.error ? h("details", {class: "exp-error"}, h("summary", {}, "Experiment error"), h("pre", {class: "traceback"}, exp.error)) : null);
    const button = (label, cls, onclick, enabled, title) => h("button", {type: "button", class: `btn ${cls}`, onclick, disabled: !enabled, title}, label);
    fill(els.actions, 
      button("Cancel", "danger", () => act("cancel"), CANCELLABLE.has(exp.state), "Stop the search (finished trials are kept)"),
      button("Resume", "", () => act("resume"), RESUMABLE.has(exp.state), "Queue it again; the search continues where it stopped"),
      button("Delete", "ghost", () => remove(), TERMINAL.has(exp.state), "Delete the experiment, its trials and artifacts"));
  }

  function renderBest() {
    const t = best?.trial;
    const exports = new Map((best?.exports || []).map((e) => [e.format, e]));
    const buttons = FORMATS.map(({format, label, title}) => {
      const e = exports.get(format);
      if (!e) return h("button", {type: "button", class: "btn small", disabled: true, title: `${title}: exported when the experiment ends`}, label);
      const name = `${exp.name.replace(/[^A-Za-z0-9._-]+/g, "_")}-${exp.id}-${format === "masks" ? "masks.safetensors" : `model.${format}`}`;
      return h("a", {class: "btn small download", href: e.url, download: name, title: `${title} · ${fmt.bytes(e.size)}${e.sha256 ? ` · sha256 ${e.sha256.slice(0, 12)}…` : ""}`,
        dataset: {format}, onclick: (ev) => {
          if (!auth.readsNeedToken) return; // a plain link: the browser streams it to disk
          ev.preventDefault();
          downloadWithToken(e.url, name).catch((err) => toast(`Download failed: ${describeError(err)}`, "error"));
        }}, `${label} `, h("span", {class: "muted small"}, fmt.bytes(e.size)));
    });
    const m = t?.metrics || {};
    fill(els.bestCard, h("h2", {id: "best-title"}, "Best trial"),
      t ? h("dl", {class: "facts"},
        h("dt", {}, "Trial"), h("dd", {}, h("button", {type: "button", class: "linkish", onclick: () => table.select(t.number)}, t.number === -1 ? "pretrain" : `#${t.number}`)),
        h("dt", {}, "Score"), h("dd", {class: "num", id: "best-score"}, fmt.score(t.score)),
        h("dt", {}, "FLOPs ratio"), h("dd", {class: "num"}, fmt.ratio(m.flops_ratio)),
        h("dt", {}, "Params ratio"), h("dd", {class: "num"}, fmt.ratio(m.params_ratio)))
        : h("p", {class: "muted"}, TERMINAL.has(exp.state) ? "No trial succeeded." : "No finished trial yet."),
      h("h3", {}, "Download the compact model"),
      h("div", {class: "downloads", id: "downloads"}, buttons),
      exports.size ? null : h("p", {class: "muted small"}, "The exports are written when the search ends."));
  }

  async function drawCharts() {
    container.querySelector("#cap-sparsity").textContent = best?.trial
      ? `Per-layer sparsity of the best trial (#${best.trial.number})` : "Per-layer sparsity of the best trial";
    const n = await charts.draw(points, {best: exp.best_trial_number, bestTrial: best?.trial || null});
    if (!alive) return;
    els.chartNote.textContent = n ? "Drag across a chart to zoom in, double-click to zoom out; click a point to open its trial."
      : "The charts fill in as trials finish.";
    if (!marks.charts) {
      marks.charts = true;
      mark("ps:charts");
      container.querySelector("#experiment-page").dataset.ready = "1";
    }
  }

  const redrawCharts = throttle(() => { if (alive && marks.charts) drawCharts(); }, 1000);
  const refreshExperiment = throttle(async () => {
    try {
      exp = await api(`/experiments/${experimentId}`);
      if (alive) renderHead();
    } catch { /* the stream says if it is gone */ }
  }, 1500);
  /** Re-read the best trial: its card is redrawn, and the charts too when the best trial changed. */
  async function reloadBest() {
    const before = best?.trial?.number;
    await loadBest();
    if (!alive) return;
    renderBest();
    if (best?.trial?.number !== before) redrawCharts();
  }
  const refreshBest = throttle(() => reloadBest().catch(() => { /* keep the last one */ }), 1500);

  function setPoint(number, state, score, flops) {
    let i = points.number.indexOf(number);
    if (i < 0) {
      // trial numbers grow, so this is almost always an append
      i = points.number.length;
      while (i > 0 && points.number[i - 1] > number) i--;
      points.number.splice(i, 0, number);
      points.state.splice(i, 0, state);
      points.score.splice(i, 0, score ?? null);
      points.flops_ratio.splice(i, 0, flops ?? null);
      return;
    }
    points.state[i] = state;
    if (score !== undefined) points.score[i] = score;
    if (flops !== undefined) points.flops_ratio[i] = flops;
  }

  function activity(text, level = "info") {
    els.activity.prepend(h("li", {class: `activity-${level}`}, h("time", {}, new Date().toLocaleTimeString()), " ", text));
    while (els.activity.children.length > MAX_ACTIVITY) els.activity.lastChild.remove();
  }

  function onEvent(kind, data) {
    if (!alive || !data) return;
    const n = data.number;
    switch (kind) {
      case "experiment_state":
        exp.state = data.state;
        renderHead();
        activity(`experiment ${data.previous ? `${data.previous} → ` : ""}${data.state}`);
        refreshExperiment();
        if (TERMINAL.has(data.state)) refreshBest();
        break;
      case "trial_started":
        table.upsert({number: n, state: "running", attempt: data.attempt, parent_number: data.parent_number, params: data.params || {}});
        setPoint(n, "running");
        detail.refresh(n);
        break;
      case "trial_progress": {
        const parts = [data.phase, data.epoch !== undefined && data.epochs ? `${data.epoch}/${data.epochs}` : null].filter(Boolean);
        table.setProgress(n, parts.join(" "));
        break;
      }
      case "trial_finished":
        table.setProgress(n, null);
        table.upsert({number: n, state: "succeeded", score: data.score, metrics: data.metrics || {}, duration_s: data.duration_s});
        setPoint(n, "succeeded", data.score, data.metrics?.flops_ratio);
        fillTrial(n);
        redrawCharts();
        refreshExperiment();
        detail.refresh(n);
        break;
      case "trial_failed":
        table.setProgress(n, null);
        table.upsert({number: n, state: "failed", error: data.error});
        setPoint(n, "failed", null);
        activity(`trial ${n} failed: ${data.error}`, "error");
        fillTrial(n);
        redrawCharts();
        refreshExperiment();
        detail.refresh(n);
        break;
      case "trial_discarded":
        // run ahead of a decision that went the other way: no longer a trial of the search (nor a chart point)
        table.setProgress(n, null);
        table.upsert({number: n, state: "discarded"});
        setPoint(n, "discarded");
        activity(`trial ${n} discarded: ${data.reason}`);
        fillTrial(n);
        redrawCharts();
        refreshExperiment();
        detail.refresh(n);
        break;
      case "best_changed":
        exp.best_trial_number = data.number;
        activity(`new best: trial ${data.number} (score ${fmt.score(data.score)})`, "success");
        refreshBest();
        break;
      case "log":
        activity(data.message || JSON.stringify(data), data.level || "info");
        break;
      default:
        break;
    }
  }

  // The events carry the headline numbers; the full row (config list, sparsity, timings) is re-read.
  const pendingFill = new Set();
  const flushFill = throttle(async () => {
    const numbers = [...pendingFill].slice(0, 20);
    for (const n of numbers) pendingFill.delete(n);
    await Promise.all(numbers.map(async (n) => {
      try {
        const t = await api(`/experiments/${experimentId}/trials/${n}`, {query: {log_bytes: 0}});
        delete t.log;
        if (alive) table.upsert(t);
      } catch { /* the row keeps what the event said */ }
    }));
    if (pendingFill.size) flushFill();
  }, 500);
  function fillTrial(n) { pendingFill.add(n); flushFill(); }

  async function onEnd(data) {
    if (!alive) return;
    if (data && data.state) exp.state = data.state;
    liveStatus("ended");
    refreshExperiment();
    await reloadBest().catch(() => null);
  }

  async function act(what) {
    try {
      exp = await api(`/experiments/${experimentId}/${what}`, {method: "POST"});
      renderHead();
      toast(what === "cancel" ? `Cancelling experiment ${experimentId}` : `Experiment ${experimentId} queued again`, "success");
      if (what === "resume" && (!stream || stream.closed)) {
        const after = stream ? stream.lastEventId : 0;
        stream = openEventStream(`/api/v1/experiments/${experimentId}/events?after=${after}`, {after, onEvent, onEnd, onStatus: liveStatus});
      }
    } catch (err) {
      toast(err.status === 409 ? `Cannot ${what}: ${describeError(err)}` : `${what} failed: ${describeError(err)}`, "error");
      refreshExperiment();
    }
  }

  async function remove() {
    if (!confirm(`Delete experiment "${exp.name}" with its trials and artifacts? This cannot be undone.`)) return;
    try {
      await api(`/experiments/${experimentId}`, {method: "DELETE"});
      toast(`Deleted experiment ${experimentId}`, "success");
      navigate("/");
    } catch (err) {
      toast(`Delete failed: ${describeError(err)}`, "error");
    }
  }

  load();

  return () => {
    alive = false;
    stream && stream.close();
    table.destroy();
    charts?.destroy();
  };
}
