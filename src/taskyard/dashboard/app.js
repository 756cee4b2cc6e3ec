// The dashboard shell: sign-in, hash routing (#/overview, #/servers[/<id>], #/tasks[/<id>]),
// and a refresh loop that polls the current page every few seconds while the tab is visible.

import { ApiError, get, session } from "./api.js";
import { ago, clock, h } from "./dom.js";
import { overviewView } from "./overview.js";
import { serverView, serversView } from "./servers.js";
import { taskView, tasksView } from "./tasks.js";

const REFRESH_MS = 2500;

const $ = (id) => document.getElementById(id);

const state = {
  view: null, // {root, refresh} of the page on screen
  generation: 0, // bumped on every page change and sign-out: late answers of old pages are ignored
  timer: null,
  running: null, // the generation whose refresh is in flight
  lastOk: null,
};

function parseRoute() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = raw.split("?", 2);
  const parts = path.split("/").filter(Boolean).map(safeDecode);
  return { page: parts[0] || "overview", id: parts[1] || null, params: new URLSearchParams(query) };
}

function safeDecode(part) {
  try {
    return decodeURIComponent(part);
  } catch {
    return part;
  }
}

function makeView(route) {
  switch (route.page) {
    case "overview":
      return overviewView();
    case "servers":
      return route.id ? serverView(route.id) : serversView();
    case "tasks":
      return route.id ? taskView(route.id) : tasksView(route.params);
    default:
      return {
        root: h("section", { class: "card" }, h("h1", null, "Not found"), h("p", null, "There is no such page. ", h("a", { href: "#/overview" }, "Go to the overview."))),
        refresh: async () => {},
      };
  }
}

// ---- sign-in ---------------------------------------------------------------------------------

function showLogin(message) {
  stopRefresh();
  state.generation++;
  state.view = null;
  $("view").replaceChildren();
  $("nav").hidden = true;
  $("session").hidden = true;
  $("banner").hidden = true;
  $("login").hidden = false;
  const error = $("login-error");
  error.hidden = !message;
  error.textContent = message || "";
  $("token").value = "";
  $("token").focus();
}

function rejected(err) {
  session.clear();
  showLogin(`token rejected: ${err.message}`);
}

async function signIn(event) {
  event.preventDefault();
  const token = $("token").value.trim().replace(/^Bearer\s+/i, "");
  $("token").value = "";
  if (!token) return;
  const button = $("login-submit");
  button.disabled = true;
  session.save(token);
  try {
    // An admin-only route that answers quickly: the dashboard's pages need an admin.
    await get("/api/nodes");
  } catch (err) {
    if (err instanceof ApiError && err.rejectsToken) {
      rejected(err);
      return;
    }
    // Anything else (a node restarting, a network blip) is not the token's fault: go on and
    // let the pages show it.
  } finally {
    button.disabled = false;
  }
  showApp();
}

function signOut() {
  session.clear();
  showLogin("");
}

function showApp() {
  $("login").hidden = true;
  $("login-error").hidden = true;
  $("nav").hidden = false;
  $("session").hidden = false;
  const claims = session.claims();
  $("logout").title = claims ? `Signed in as ${claims.sub} (${claims.roles.join(", ")})` : "";
  if (!location.hash || location.hash === "#") {
    location.replace("#/overview"); // fires hashchange → route()
    return;
  }
  route();
}

// ---- pages and refresh -----------------------------------------------------------------------

function route() {
  if (!session.token) {
    showLogin("");
    return;
  }
  const current = parseRoute();
  for (const a of document.querySelectorAll("#nav a")) {
    const here = a.dataset.page === current.page;
    a.classList.toggle("active", here);
    if (here) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  stopRefresh();
  state.generation++;
  state.view = makeView(current);
  $("view").replaceChildren(state.view.root);
  window.scrollTo(0, 0);
  tick(state.generation);
}

async function tick(generation) {
  state.timer = null;
  if (generation !== state.generation || state.running === generation) return;
  if (document.hidden) {
    setRefreshState("paused", "paused while the tab is hidden");
    return; // visibilitychange starts it again
  }
  state.running = generation;
  setRefreshState("busy", state.lastOk ? `updated ${clock(state.lastOk)}` : "loading…");
  try {
    await state.view.refresh();
    if (generation !== state.generation) return;
    state.lastOk = Date.now();
    // Pages skip re-rendering unchanged data; keep their relative times current anyway.
    for (const el of $("view").querySelectorAll("time.rel")) el.textContent = ago(el.getAttribute("datetime"));
    $("banner").hidden = true;
    setRefreshState("live", `updated ${clock(state.lastOk)}`);
  } catch (err) {
    if (generation !== state.generation) return;
    if (err instanceof ApiError && err.rejectsToken) {
      rejected(err);
      return;
    }
    showBanner(err);
    setRefreshState("stale", state.lastOk ? `last update ${clock(state.lastOk)}` : "no data");
  } finally {
    if (state.running === generation) state.running = null;
  }
  if (generation === state.generation) {
    state.timer = setTimeout(() => tick(generation), REFRESH_MS);
  }
}

function stopRefresh() {
  clearTimeout(state.timer);
  state.timer = null;
}

function showBanner(err) {
  const banner = $("banner");
  const what = err instanceof ApiError ? err.message : `the page failed: ${err && err.message ? err.message : err}`;
  banner.replaceChildren(h("strong", null, "Refresh failed: "), what, " (retrying)");
  banner.hidden = false;
}

function setRefreshState(kind, text) {
  const el = $("refresh-state");
  el.className = `refresh refresh-${kind}`;
  el.textContent = text;
}

document.addEventListener("visibilitychange", () => {
  // Back in view: refresh at once, unless a refresh is already due or running.
  if (!document.hidden && state.view && state.timer === null) tick(state.generation);
});

window.addEventListener("hashchange", route);
$("login-form").addEventListener("submit", signIn);
$("logout").addEventListener("click", signOut);

if (session.token) showApp();
else showLogin("");
