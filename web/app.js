// prunesearch web UI: a small client-side router over three views, and the token field.
//   /                    experiments list
//   /experiments/new     new experiment
//   /experiments/{id}    one experiment, live

import {auth} from "./api.js";
import {toast} from "./dom.js";
import {mountExperiment} from "./experiment.js";
import {mountList} from "./list.js";
import {mountNew} from "./new.js";

const main = document.getElementById("main");
let unmount = null;

const ROUTES = [
  {pattern: /^\/(?:experiments\/?)?$/, nav: "list", mount: (ctx) => mountList(main, ctx)},
  {pattern: /^\/experiments\/new\/?$/, nav: "new", mount: (ctx) => mountNew(main, ctx)},
  {pattern: /^\/experiments\/(\d+)\/?$/, nav: "", mount: (ctx, m) => mountExperiment(main, {...ctx, id: m[1]})},
];

export function navigate(path, {replace = false} = {}) {
  if (replace) history.replaceState({}, "", path);
  else history.pushState({}, "", path);
  route();
  main.focus({preventScroll: true});
  window.scrollTo(0, 0);
}

function route() {
  if (unmount) { try { unmount(); } catch (err) { console.error(err); } }
  unmount = null;
  document.title = "prunesearch";
  const path = location.pathname;
  for (const r of ROUTES) {
    const m = r.pattern.exec(path);
    if (!m) continue;
    for (const a of document.querySelectorAll("[data-nav]")) {
      if (a.dataset.nav === r.nav) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    unmount = r.mount({navigate}, m) || null;
    return;
  }
  main.replaceChildren(Object.assign(document.createElement("p"), {className: "state-block", textContent: `No page at ${path}.`}));
}

// Same-origin links marked data-link navigate without a page load.
document.addEventListener("click", (e) => {
  const a = e.target.closest && e.target.closest("a[data-link]");
  if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  e.preventDefault();
  if (a.getAttribute("href") !== location.pathname + location.search) navigate(a.getAttribute("href"));
});
window.addEventListener("popstate", route);

// -- the token field in the header ---------------------------------------------------------------

function showTokenState() {
  const state = document.getElementById("token-state");
  const input = document.getElementById("token-input");
  input.value = "";
  input.placeholder = auth.token ? "saved ✓ (enter to replace)" : "not set";
  state.textContent = auth.token ? "token saved" : "";
  document.getElementById("token-clear").hidden = !auth.token;
}

document.getElementById("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const value = document.getElementById("token-input").value.trim();
  if (!value) return;
  auth.set(value);
  toast("Token saved in this browser", "success", 3000);
});
document.getElementById("token-clear").addEventListener("click", () => {
  auth.set("");
  toast("Token removed from this browser", "info", 3000);
});
document.addEventListener("ps:token", showTokenState);
showTokenState();

route();
