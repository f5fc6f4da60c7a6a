// Experiments list: filter by state / algorithm / name, sort, cursor pagination; refreshes while
// experiments are active.

import {api} from "./api.js";
import {clear, debounce, emptyState, errorState, fill, fmt, h, loading, plannedTrials, stateBadge, TERMINAL} from "./dom.js";
import {getCatalog} from "./new.js";

const STATES = ["queued", "running", "cancelling", "succeeded", "failed", "cancelled"];
const SORTABLE = {name: "name", state: "state", best_score: "best_score", created_at: "created_at"};
const PAGE = 25;
const REFRESH_MS = 5000;

function readQuery() {
  const q = new URLSearchParams(location.search);
  return {
    state: q.getAll("state").filter((s) => STATES.includes(s)),
    algorithm: q.get("algorithm") || "",
    q: q.get("q") || "",
    sort: q.get("sort") || "-created_at",
  };
}

function writeQuery(filters) {
  const q = new URLSearchParams();
  for (const s of filters.state) q.append("state", s);
  if (filters.algorithm) q.set("algorithm", filters.algorithm);
  if (filters.q) q.set("q", filters.q);
  if (filters.sort !== "-created_at") q.set("sort", filters.sort);
  const qs = q.toString();
  history.replaceState(history.state, "", qs ? `/?${qs}` : "/");
}

export function mountList(container, {navigate}) {
  const filters = readQuery();
  const pages = [null]; // cursor of each page seen (page 0 has none)
  let pageIndex = 0;
  let controller = null;
  let refreshTimer = null;
  let alive = true;

  const search = h("input", {id: "filter-q", type: "search", placeholder: "Name contains…", value: filters.q, "aria-label": "Filter by name"});
  const algo = h("select", {id: "filter-algorithm", "aria-label": "Filter by algorithm"}, h("option", {value: ""}, "All algorithms"));
  if (filters.algorithm) algo.append(h("option", {value: filters.algorithm}, filters.algorithm));
  algo.value = filters.algorithm;
  const stateBoxes = h("fieldset", {class: "state-filter"}, h("legend", {class: "sr-only"}, "Filter by state"),
    STATES.map((s) => h("label", {class: `chip state-${s}`},
      h("input", {type: "checkbox", value: s, checked: filters.state.includes(s), onchange: () => {
        filters.state = [...stateBoxes.querySelectorAll("input:checked")].map((i) => i.value);
        restart();
      }}), s)));
  const sortSelect = h("select", {id: "sort-select", "aria-label": "Sort by"},
    [["-created_at", "Newest first"], ["created_at", "Oldest first"], ["name", "Name A–Z"], ["-name", "Name Z–A"],
      ["-best_score", "Best score, high first"], ["best_score", "Best score, low first"], ["state", "State"]]
      .map(([v, t]) => h("option", {value: v}, t)));
  sortSelect.value = filters.sort;
  sortSelect.addEventListener("change", () => { filters.sort = sortSelect.value; restart(); });
  search.addEventListener("input", debounce(() => { filters.q = search.value.trim(); restart(); }, 300));
  algo.addEventListener("change", () => { filters.algorithm = algo.value; restart(); });

  const body = h("div", {id: "list-body"});
  const pager = h("nav", {class: "pager", "aria-label": "Pages"});
  fill(container, h("section", {class: "page"},
    h("div", {class: "page-head"}, h("h1", {}, "Experiments"),
      h("a", {class: "btn primary", href: "/experiments/new", "data-link": true}, "New experiment")),
    h("div", {class: "filters"}, search, algo, sortSelect, stateBoxes),
    body, pager));

  getCatalog().then((cat) => {
    if (!alive) return;
    for (const a of cat.algorithms) if (a.name !== filters.algorithm) algo.append(h("option", {value: a.name}, a.name));
  }).catch(() => { /* the filter keeps "All"; the list itself still works */ });

  restart();
  return () => { alive = false; clearTimeout(refreshTimer); controller && controller.abort(); };

  function restart() {
    pages.length = 1;
    pageIndex = 0;
    writeQuery(filters);
    load(true);
  }

  async function load(showSpinner) {
    clearTimeout(refreshTimer);
    controller && controller.abort();
    controller = new AbortController();
    if (showSpinner) fill(body, loading("Loading experiments…"));
    body.setAttribute("aria-busy", "true");
    let page;
    try {
      page = await api("/experiments", {signal: controller.signal, query: {
        state: filters.state, algorithm: filters.algorithm, q: filters.q, sort: filters.sort, limit: PAGE, cursor: pages[pageIndex],
      }});
    } catch (err) {
      if (err.name === "AbortError" || !alive) return;
      fill(body, errorState(err, () => load(true)));
      clear(pager);
      body.removeAttribute("aria-busy");
      return;
    }
    body.removeAttribute("aria-busy");
    pages[pageIndex + 1] = page.next_cursor;
    render(page);
    if (page.data.some((e) => !TERMINAL.has(e.state))) {
      refreshTimer = setTimeout(() => { if (document.visibilityState === "visible") load(false); else refreshTimer = setTimeout(() => load(false), REFRESH_MS); }, REFRESH_MS);
    }
  }

  function header(label, key) {
    if (!key) return h("th", {scope: "col"}, label);
    const asc = filters.sort === key;
    const desc = filters.sort === `-${key}`;
    return h("th", {scope: "col", "aria-sort": asc ? "ascending" : desc ? "descending" : "none"},
      h("button", {type: "button", class: "sort-btn", onclick: () => {
        filters.sort = asc ? `-${key}` : key;
        sortSelect.value = filters.sort;
        restart();
      }}, label, h("span", {class: "sort-arrow", "aria-hidden": "true"}, asc ? " ▲" : desc ? " ▼" : "")));
  }

  function render(page) {
    clear(pager);
    if (page.count === 0) {
      const filtered = filters.state.length || filters.algorithm || filters.q;
      fill(body, filtered
        ? emptyState("No experiments match these filters.", null, h("button", {class: "btn", type: "button", onclick: () => {
          filters.state = []; filters.algorithm = ""; filters.q = ""; search.value = ""; algo.value = "";
          for (const box of stateBoxes.querySelectorAll("input")) box.checked = false;
          restart();
        }}, "Clear filters"))
        : emptyState("No experiments yet.", "Submit a spec to start a pruning search.",
          h("a", {class: "btn primary", href: "/experiments/new", "data-link": true}, "New experiment")));
      return;
    }
    const rows = page.data.map((e) => {
      const planned = plannedTrials(e);
      const progress = planned ? Math.min(1, e.n_trials / planned) : null;
      return h("tr", {dataset: {id: String(e.id), state: e.state}},
        h("td", {class: "name-cell"}, h("a", {href: `/experiments/${e.id}`, "data-link": true}, e.name), h("span", {class: "muted small"}, ` #${e.id}`)),
        h("td", {}, stateBadge(e.state)),
        h("td", {}, e.algorithm),
        h("td", {class: "mono small"}, e.model.replace(/^search\.zoo:/, "")),
        h("td", {class: "num"}, fmt.score(e.best_score)),
        h("td", {class: "num"}, fmt.ratio(e.best_flops_ratio)),
        h("td", {}, h("span", {class: "progress-cell"},
          progress === null ? null : h("progress", {max: "1", value: String(progress), "aria-label": `${e.n_trials} of ${planned} trials`}),
          h("span", {class: "small"}, planned ? `${e.n_trials}/${planned}` : `${e.n_trials}`))),
        h("td", {title: fmt.date(e.created_at)}, fmt.ago(e.created_at)));
    });
    fill(body, h("div", {class: "table-wrap"}, h("table", {class: "data-table", id: "experiments-table"},
      h("caption", {class: "sr-only"}, "Experiments"),
      h("thead", {}, h("tr", {},
        header("Name", SORTABLE.name), header("Status", SORTABLE.state), header("Algorithm"), header("Model"),
        header("Best score", SORTABLE.best_score), header("FLOPs ratio"), header("Progress"), header("Created", SORTABLE.created_at))),
      h("tbody", {}, rows))));
    const first = pageIndex * PAGE + 1;
    pager.append(
      h("button", {class: "btn small", type: "button", disabled: pageIndex === 0, onclick: () => { pageIndex -= 1; load(true); }}, "← Previous"),
      h("span", {class: "muted"}, `${first}–${first + page.data.length - 1} of ${page.count}`),
      h("button", {class: "btn small", type: "button", disabled: !page.next_cursor, onclick: () => { pageIndex += 1; load(true); }}, "Next →"));
  }
}
