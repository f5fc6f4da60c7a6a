// New experiment: pick model / data set / pruner / algorithm from GET /catalog, edit the spec as JSON
// or YAML, submit; a 422 is shown at its form field and at its line in the editor.

import {api, ApiError} from "./api.js";
import {SpecEditor} from "./editor.js";
import {clear, debounce, describeError, errorState, fill, h, loading, pathKey, toast} from "./dom.js";
import {parseSpecText, SpecSyntaxError, toText} from "./spec_text.js";

let catalogCache = null;
export async function getCatalog() {
  if (!catalogCache) catalogCache = api("/catalog").catch((err) => { catalogCache = null; throw err; });
  return catalogCache;
}

// Values for required constructor arguments that have no default in the catalog.
const REQUIRED_EXAMPLES = {total_iteration: 3, training_steps: 10};

/** The form fields that own a spec path (a 422 at that path is shown under the field too). */
const FIELD_OF = {
  "spec.name": "f-name",
  "spec.model": "f-model", "spec.model.factory": "f-model",
  "spec.data": "f-data", "spec.data.name": "f-data",
  "spec.pruner.name": "f-pruner",
  "spec.algorithm": "f-algorithm", "spec.algorithm.name": "f-algorithm",
  "max_trials": "f-max-trials",
};

function defaultDataset(model, datasets) {
  const names = datasets.filter((d) => d.available).map((d) => d.name);
  if (/transformer|token/.test(model) && names.includes("synthetic_tokens")) return "synthetic_tokens";
  return names.includes("digits") ? "digits" : names[0];
}

function requiredArgs(entry) {
  const out = {};
  for (const p of entry?.params || []) if (p.required) out[p.name] = REQUIRED_EXAMPLES[p.name] ?? null;
  return out;
}

/** A complete spec for the chosen catalog entries (what the editor starts from). */
export function templateSpec(catalog, choice) {
  const pruner = catalog.pruners.find((p) => p.name === choice.pruner);
  const algorithm = catalog.algorithms.find((a) => a.name === choice.algorithm);
  const model = catalog.models.find((m) => m.name === choice.model);
  const prunerArgs = requiredArgs(pruner);
  return {
    name: `${choice.model}-${choice.algorithm}`,
    model: {factory: model?.factory || `search.zoo:${choice.model}`, kwargs: {}, weights: null},
    data: {name: choice.data},
    pruner: {
      name: choice.pruner,
      config_list: [{op_types: [/transformer/.test(choice.model) ? "Linear" : "Conv2d"], sparse_ratio: 0.5}],
      ...(Object.keys(prunerArgs).length ? {kwargs: prunerArgs} : {}),
    },
    algorithm: {name: choice.algorithm, ...requiredArgs(algorithm)},
    trial: {finetune_epochs: 1, pretrain_epochs: 1, batch_size: 64, lr: 0.01, optimizer: "sgd", speedup: true},
    objective: {metric: "accuracy", best_result_mode: "maximize"},
    constraints: {},
    resources: {max_concurrent_trials: 1},
  };
}

function paramsHint(entry) {
  if (!entry) return "";
  const params = (entry.params || []).map((p) => (p.required ? `${p.name} (required)` : `${p.name}=${JSON.stringify(p.default)}`));
  return [entry.description, params.length ? `Parameters: ${params.join(", ")}` : ""].filter(Boolean).join(" — ");
}

export function mountNew(container, {navigate}) {
  const state = {format: "json", catalog: null, autoName: null, busy: false, lines: new Map()};
  const errorBox = h("div", {class: "error-summary", id: "spec-errors", role: "alert", tabindex: "-1", hidden: true});
  const editor = new SpecEditor({id: "spec-editor", label: "Experiment spec", describedBy: "spec-errors spec-help", onInput: () => onEditorInput()});

  const field = (id, labelText, control, hint) => h("div", {class: "field", id: `${id}-field`},
    h("label", {for: id}, labelText), control,
    h("p", {class: "field-hint muted", id: `${id}-hint`}, hint || ""),
    h("p", {class: "field-error", id: `${id}-error`, hidden: true}));
  const select = (id) => h("select", {id, name: id, "aria-describedby": `${id}-hint ${id}-error`});
  const inputs = {
    name: h("input", {id: "f-name", name: "name", type: "text", required: true, maxlength: "200", "aria-describedby": "f-name-error"}),
    model: select("f-model"), data: select("f-data"), pruner: select("f-pruner"), algorithm: select("f-algorithm"),
    maxTrials: h("input", {id: "f-max-trials", name: "max_trials", type: "number", min: "1", step: "1", inputmode: "numeric",
      placeholder: "from the algorithm", "aria-describedby": "f-max-trials-hint f-max-trials-error"}),
  };
  const formatRadios = ["json", "yaml"].map((f) => h("label", {class: "radio"},
    h("input", {type: "radio", name: "format", value: f, checked: f === "json", onchange: () => switchFormat(f)}), f.toUpperCase()));
  const submitBtn = h("button", {class: "btn primary", type: "submit", id: "submit-experiment"}, "Submit experiment");
  const status = h("span", {class: "muted", role: "status", "aria-live": "polite"});

  const form = h("form", {class: "new-form", novalidate: true, onsubmit: (e) => { e.preventDefault(); submit(); }},
    h("div", {class: "new-fields"},
      field("f-name", "Name", inputs.name),
      field("f-model", "Model", inputs.model),
      field("f-data", "Data set", inputs.data),
      field("f-pruner", "Pruner", inputs.pruner),
      field("f-algorithm", "Search algorithm", inputs.algorithm),
      field("f-max-trials", "Max trials (optional)", inputs.maxTrials, "Caps the number of trials (overrides algorithm.max_trials)."),
    ),
    h("div", {class: "new-editor"},
      h("div", {class: "editor-toolbar"},
        h("span", {class: "editor-title", id: "spec-help"}, "Spec — the choices on the left are written into it; edit anything else here."),
        h("fieldset", {class: "format-toggle"}, h("legend", {class: "sr-only"}, "Spec format"), formatRadios),
        h("button", {class: "btn small ghost", type: "button", onclick: () => resetTemplate()}, "Reset to template")),
      editor.el,
      errorBox,
      h("div", {class: "form-actions"}, submitBtn, status)));

  fill(container, h("section", {class: "page"},
    h("div", {class: "page-head"}, h("h1", {}, "New experiment")),
    h("div", {id: "new-body"}, loading("Loading the catalog (models, data sets, pruners, algorithms)…"))));

  let alive = true;

  async function load() {
    const body = container.querySelector("#new-body");
    try {
      state.catalog = await getCatalog();
    } catch (err) {
      if (!alive) return;
      fill(body, errorState(err, load));
      return;
    }
    if (!alive) return;
    const cat = state.catalog;
    const options = (sel, entries) => {
      clear(sel);
      for (const e of entries) sel.append(h("option", {value: e.name, disabled: e.available === false ? true : null}, e.available === false ? `${e.name} (unavailable)` : e.name));
    };
    options(inputs.model, cat.models);
    options(inputs.data, cat.datasets);
    options(inputs.pruner, cat.pruners);
    options(inputs.algorithm, cat.algorithms);
    const pick = (list, wanted) => (list.some((e) => e.name === wanted && e.available !== false) ? wanted : list.find((e) => e.available !== false)?.name);
    inputs.model.value = pick(cat.models, "digits_cnn");
    inputs.data.value = defaultDataset(inputs.model.value, cat.datasets);
    inputs.pruner.value = pick(cat.pruners, "l1");
    inputs.algorithm.value = pick(cat.algorithms, "agp");
    for (const [key, sel] of Object.entries({model: inputs.model, data: inputs.data, pruner: inputs.pruner, algorithm: inputs.algorithm})) {
      sel.addEventListener("change", () => onChoice(key));
    }
    const syncName = debounce(() => editSpec((spec) => { spec.name = inputs.name.value; }), 300);
    inputs.name.addEventListener("input", syncName);
    fill(body, form);
    resetTemplate();
  }

  function choice() {
    return {model: inputs.model.value, data: inputs.data.value, pruner: inputs.pruner.value, algorithm: inputs.algorithm.value};
  }

  function updateHints() {
    const cat = state.catalog;
    if (!alive || !cat) return;
    const set = (id, entry) => { container.querySelector(`#${id}-hint`).textContent = paramsHint(entry); };
    set("f-model", cat.models.find((e) => e.name === inputs.model.value));
    set("f-data", cat.datasets.find((e) => e.name === inputs.data.value));
    set("f-pruner", cat.pruners.find((e) => e.name === inputs.pruner.value));
    set("f-algorithm", cat.algorithms.find((e) => e.name === inputs.algorithm.value));
  }

  function resetTemplate() {
    const spec = templateSpec(state.catalog, choice());
    state.autoName = spec.name;
    inputs.name.value = spec.name;
    editor.value = toText(spec, state.format);
    clearErrors();
    updateHints();
  }

  /** Parse the editor, apply `change` to the spec, write it back (keeps the person's other edits). */
  async function editSpec(change) {
    let parsed;
    try {
      parsed = await parseSpecText(editor.value, state.format);
    } catch (err) {
      showSyntax(err);
      return false;
    }
    const spec = parsed.value && typeof parsed.value === "object" && !Array.isArray(parsed.value) ? parsed.value : {};
    change(spec);
    editor.value = toText(spec, state.format);
    clearErrors();
    return true;
  }

  async function onChoice(key) {
    const cat = state.catalog;
    const c = choice();
    if (key === "model") {
      inputs.data.value = defaultDataset(c.model, cat.datasets);
      c.data = inputs.data.value;
    }
    const tpl = templateSpec(cat, c);
    await editSpec((spec) => {
      if (key === "model") {
        spec.model = {...(spec.model || {}), factory: tpl.model.factory, kwargs: {}};
        spec.data = {...(spec.data || {}), name: c.data};
        spec.pruner = {...(spec.pruner || {}), config_list: tpl.pruner.config_list};
      } else if (key === "data") {
        spec.data = {...(spec.data || {}), name: c.data};
      } else if (key === "pruner") {
        const {kwargs, ...rest} = spec.pruner || {};
        spec.pruner = {...rest, name: c.pruner, ...(tpl.pruner.kwargs ? {kwargs: tpl.pruner.kwargs} : {})};
      } else if (key === "algorithm") {
        spec.algorithm = tpl.algorithm;
      }
      if (!spec.name || spec.name === state.autoName) {
        spec.name = tpl.name;
        state.autoName = tpl.name;
        inputs.name.value = tpl.name;
      }
    });
    updateHints();
  }

  let syncTimer = null;
  function onEditorInput() {
    // keep the form in step with the text (selects and name follow the spec), quietly
    clearTimeout(syncTimer);
    syncTimer = setTimeout(async () => {
      if (!alive) return;
      let parsed;
      try { parsed = await parseSpecText(editor.value, state.format); } catch { return; }
      const spec = parsed.value || {};
      if (typeof spec.name === "string") inputs.name.value = spec.name;
      const setIf = (sel, v) => { if (typeof v === "string" && [...sel.options].some((o) => o.value === v)) sel.value = v; };
      const factory = spec.model?.factory;
      if (typeof factory === "string") setIf(inputs.model, factory.includes(":") ? factory.split(":")[1] : factory);
      setIf(inputs.data, spec.data?.name);
      setIf(inputs.pruner, spec.pruner?.name);
      setIf(inputs.algorithm, spec.algorithm?.name);
      updateHints();
    }, 400);
  }

  async function switchFormat(format) {
    if (format === state.format) return;
    try {
      const parsed = await parseSpecText(editor.value, state.format);
      state.format = format;
      editor.value = toText(parsed.value, format);
      clearErrors();
    } catch (err) {
      container.querySelector(`input[name=format][value=${state.format}]`).checked = true;
      showSyntax(err);
    }
  }

  function clearErrors() {
    errorBox.hidden = true;
    clear(errorBox);
    editor.setErrors([]);
    for (const el of container.querySelectorAll(".field-error")) { el.hidden = true; el.textContent = ""; }
    for (const el of container.querySelectorAll("[aria-invalid=true]")) el.setAttribute("aria-invalid", "false");
  }

  function showSyntax(err) {
    clearErrors();
    if (err instanceof SpecSyntaxError) {
      editor.setErrors([{line: err.line, message: err.message, path: ""}]);
      showSummary([{label: `Line ${err.line}`, message: `the spec is not valid ${state.format.toUpperCase()}: ${err.message}`, line: err.line}]);
    } else {
      showSummary([{label: "Error", message: describeError(err)}]);
    }
  }

  /** The editor line of a spec path: the path itself, else its nearest ancestor that is in the text. */
  function lineOf(parts) {
    for (let n = parts.length; n >= 0; n--) {
      const line = state.lines.get(pathKey(parts.slice(0, n)));
      if (line !== undefined) return {line, exact: n === parts.length};
    }
    return {line: 1, exact: false};
  }

  function showServerErrors(detail) {
    clearErrors();
    const items = [];
    const editorErrors = [];
    for (const err of Array.isArray(detail) ? detail : [{loc: ["body"], msg: String(detail)}]) {
      const loc = (err.loc || []).slice(1); // drop "body"
      const key = pathKey(loc);
      const fieldId = FIELD_OF[key];
      const item = {label: key || "request", message: err.msg, path: key};
      if (fieldId) {
        const el = container.querySelector(`#${fieldId}-error`);
        el.hidden = false;
        el.textContent = err.msg;
        container.querySelector(`#${fieldId}`).setAttribute("aria-invalid", "true");
        item.field = fieldId;
      }
      if (loc[0] === "spec") {
        const specPath = loc.slice(1);
        const {line, exact} = lineOf(specPath);
        const where = pathKey(specPath) || "spec";
        editorErrors.push({line, path: where, message: exact ? `${where}: ${err.msg}` : `${where} (missing): ${err.msg}`});
        item.line = line;
        item.label = `Line ${line} · ${where}`;
      }
      items.push(item);
    }
    editor.setErrors(editorErrors);
    showSummary(items);
  }

  function showSummary(items) {
    fill(errorBox, 
      h("p", {class: "error-title"}, items.length === 1 ? "The server rejected the spec:" : `The server rejected the spec (${items.length} problems):`),
      h("ul", {}, items.map((it) => h("li", {dataset: {path: it.path || ""}},
        h("button", {type: "button", class: "linkish", onclick: () => (it.field ? container.querySelector(`#${it.field}`).focus() : it.line ? editor.goToLine(it.line) : null)}, it.label),
        `: ${it.message}`))));
    errorBox.hidden = false;
    if (items.some((it) => it.line)) editor.goToLine(items.find((it) => it.line).line);
    errorBox.focus({preventScroll: true});
  }

  async function submit() {
    if (state.busy) return;
    clearErrors();
    let parsed;
    try {
      parsed = await parseSpecText(editor.value, state.format);
    } catch (err) {
      showSyntax(err);
      return;
    }
    state.lines = parsed.lines;
    const body = {spec: parsed.value};
    const maxTrials = inputs.maxTrials.value.trim();
    if (maxTrials !== "") body.max_trials = Number(maxTrials);
    state.busy = true;
    submitBtn.disabled = true;
    status.textContent = "Validating on the server…";
    try {
      const exp = await api("/experiments", {method: "POST", body});
      toast(`Experiment ${exp.id} "${exp.name}" queued`, "success");
      navigate(`/experiments/${exp.id}`);
    } catch (err) {
      if (!alive) return;
      if (err instanceof ApiError && err.status === 422) showServerErrors(err.detail);
      else showSummary([{label: err.status ? `HTTP ${err.status}` : "Error", message: describeError(err)}]);
    } finally {
      state.busy = false;
      submitBtn.disabled = false;
      status.textContent = "";
    }
  }

  load();
  return () => { alive = false; };
}
