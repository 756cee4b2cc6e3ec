// Servers: the fleet table, and one server's health, stats, recent attempts and maintenance.

import { ApiError, get, getAll, put, session } from "./api.js";
import { at, badge, between, card, clock, duration, facts, failure, h, link, notice, num, searchLink, shortId, showResult, table, when } from "./dom.js";

/** The API's `state` (online, offline, ejected, draining, maintenance), with busy for an online
 * server whose every slot is in use. */
export function serverState(server) {
  const state = server.state || (server.status === "online" ? "online" : "offline");
  if (state === "online" && server.inFlight >= server.max_concurrency) return "busy";
  return state;
}

const EJECTION_REASONS = {
  failing: "failing dispatches",
  rejecting: "refusing tasks (4xx)",
};

/** Why it was ejected, from `lastError` (which names the ejection) or else its reason, and
 * until when: "ejected (failing): 3 failed dispatches in a row, … (until 14:03:12)". */
function ejection(health) {
  const why = health.lastError || `ejected for ${EJECTION_REASONS[health.ejectionReason] || health.ejectionReason || "its dispatches"}`;
  return `${why}${health.ejectedUntil ? ` (until ${clock(health.ejectedUntil)})` : ""}`;
}

/** Why the server is in its state, in words. */
function reason(server) {
  const health = server.health || {};
  const maintenance = server.maintenance || {};
  const state = serverState(server);
  if (state === "offline") {
    if (health.lastError) return health.lastError;
    return health.lastCheckAt ? "failed its last check" : "not checked yet";
  }
  if (state === "ejected") return ejection(health);
  if (state === "draining" || state === "maintenance") {
    const why = maintenance.reason ? `: ${maintenance.reason}` : " (no reason given)";
    const running = state === "draining" ? `, ${num(server.inFlight)} still running` : "";
    return `in maintenance${why}${running}`;
  }
  if (state === "busy") return `all ${server.max_concurrency} slots in use`;
  if (!server.endpoints || !server.endpoints.health) return "heartbeats (no health URL)";
  return `health checks passing (${num(health.consecutiveSuccesses)} in a row)`;
}

function load(inFlight, max) {
  const share = max ? Math.min(1, inFlight / max) : 0;
  return h(
    "span",
    { class: "load" },
    h("span", { class: "load-text" }, `${num(inFlight)} / ${num(max)}`),
    h("meter", { class: "load-meter", min: 0, max: 1, low: 0.75, high: 0.99, optimum: 0, value: share }),
  );
}

export function serversView() {
  const root = h("div", { class: "page" });
  let last = "";

  async function refresh() {
    const [list, stats] = await getAll([get("/api/servers"), get("/api/stats")]);
    if (list instanceof ApiError) throw list;
    const key = JSON.stringify([list, stats instanceof ApiError ? stats.message : stats.serverStats]);
    if (key === last) return;
    last = key;
    root.replaceChildren(...render(list.servers, stats));
  }
  return { root, refresh };
}

function render(servers, stats) {
  const byId = new Map(stats instanceof ApiError ? [] : stats.serverStats.map((x) => [x.id, x]));
  const states = servers.map(serverState);
  const count = (kind) => states.filter((x) => x === kind).length;
  const sorted = servers.map((server, i) => ({ server, state: states[i] }));
  const order = { offline: 0, ejected: 1, draining: 2, maintenance: 3, busy: 4, online: 5 };
  const rank = (state) => order[state] ?? -1; // a state this page does not know yet goes first
  sorted.sort((a, b) => rank(a.state) - rank(b.state) || String(a.server.name).localeCompare(String(b.server.name)));
  const others = ["ejected", "draining", "maintenance"].filter((kind) => count(kind)).map((kind) => `, ${count(kind)} ${kind}`);

  const out = [
    h(
      "div",
      { class: "page-head" },
      h("h1", null, "Servers"),
      h(
        "span",
        { class: "muted" },
        `${num(servers.length)} registered: ${count("online")} online, ${count("busy")} busy, ${count("offline")} offline${others.join("")}`,
      ),
    ),
  ];
  if (stats instanceof ApiError) out.push(notice("warn", `Latency and attempt counts unavailable: ${stats.message}`));

  const columns = [
    { label: "server" },
    { label: "state" },
    { label: "reason / last error", cls: "wide" },
    { label: "in flight / max", cls: "num" },
    { label: "p50 latency", cls: "num" },
    { label: "attempts (1 h)", cls: "num" },
    { label: "last check" },
    { label: "checked by" },
    { label: "models" },
  ];
  const rows = sorted.map(({ server, state }) => {
    const s = byId.get(server.id);
    const health = server.health || {};
    return {
      attrs: { "data-server-id": server.id, "data-state": state, class: `row-${state}` },
      cells: [
        h(
          "div",
          { class: "stack" },
          link(["servers", server.id], server.name || server.id, { class: "strong nowrap" }),
          server.name && server.name !== server.id ? h("span", { class: "muted small mono" }, server.id) : null,
        ),
        badge(state),
        h("span", { class: `reason ${REASON_CLASS[state] || "muted"}` }, reason(server)),
        load(server.inFlight, server.max_concurrency),
        s ? duration(s.p50LatencyMs) : "—",
        s ? h("span", null, num(s.attempts), s.failures ? h("span", { class: "text-bad" }, ` · ${num(s.failures)} failed`) : null) : "—",
        health.lastCheckAt ? when(health.lastCheckAt) : h("span", { class: "muted" }, server.endpoints?.health ? "never" : "heartbeats"),
        server.checkedBy ? h("span", { class: "mono small", title: server.checkedBy }, shortId(server.checkedBy)) : h("span", { class: "muted" }, "—"),
        modelList(server.models),
      ],
    };
  });
  out.push(card(null, table(columns, rows, { empty: "No servers registered.", cls: "servers-table" })));
  return out;
}

const REASON_CLASS = { offline: "text-bad", ejected: "text-bad", draining: "text-warn", maintenance: "text-maint" };

function modelList(models) {
  if (!models || !models.length) return h("span", { class: "muted" }, "any model");
  return h("span", { class: "models" }, models.map((m) => h("span", { class: "chip mono" }, m)));
}

// ---- one server ------------------------------------------------------------------------------

export function serverView(id) {
  // top and body are rebuilt when the data changes; the maintenance card between them is built
  // once, so a reason being typed keeps its text and focus across refreshes.
  const top = h("div", { class: "page" });
  const body = h("div", { class: "page" });
  const control = session.mayAdminister ? maintenanceControl(id, (server) => changed(server)) : null;
  const root = h("div", { class: "page" }, top, control ? control.root : null, body);
  let last = "";
  let sequence = 0;

  async function refresh() {
    const mine = ++sequence;
    const path = encodeURIComponent(id);
    const [server, stats] = await getAll([get(`/api/servers/${path}`), get(`/api/stats/servers/${path}`)]);
    if (mine !== sequence) return;
    if (server instanceof ApiError) {
      if (server.status !== 404) throw server;
      top.replaceChildren(
        back(),
        notice("error", `No server ${id}: it was never registered, or it has been removed.`),
      );
      body.replaceChildren();
      if (control) control.root.hidden = true;
      last = "";
      return;
    }
    const key = JSON.stringify([server, stats instanceof ApiError ? stats.message : stats]);
    if (key === last) return;
    last = key;
    const parts = renderServer(server, stats);
    top.replaceChildren(...parts.top);
    body.replaceChildren(...parts.body);
    if (control) control.update(server);
  }

  function changed(server) {
    if (control) control.update(server);
    last = "";
    refresh().catch((err) => {
      if (!(err instanceof ApiError)) console.error(err);
    });
  }
  return { root, refresh };
}

/** The admin's switch: put the server in maintenance (with an optional reason) or end it. */
function maintenanceControl(id, changed) {
  const status = h("p", { class: "maintenance-status", id: "maintenance-status" });
  const reasonInput = h("input", { type: "text", id: "maintenance-reason", maxlength: 1000, placeholder: "e.g. driver update", spellcheck: "false" });
  const reasonField = h("label", { class: "field maintenance-field" }, h("span", null, "reason (optional)"), reasonInput);
  const on = h("button", { type: "submit", class: "button warn", id: "maintenance-on" }, "Put in maintenance");
  const off = h("button", { type: "button", class: "button", id: "maintenance-off", hidden: true }, "End maintenance");
  const result = h("div", { class: "action-result", id: "maintenance-result", hidden: true, "aria-live": "polite" });
  const form = h("form", { class: "maintenance-form", autocomplete: "off" }, reasonField, on, off);
  const root = card("Maintenance", status, form, result);
  root.id = "maintenance";
  let busy = false;

  async function set(enabled) {
    if (busy) return;
    busy = true;
    on.disabled = off.disabled = true;
    const reason = reasonInput.value.trim();
    try {
      const server = await put(`/api/servers/${encodeURIComponent(id)}/maintenance`, { enabled, reason: enabled && reason ? reason : null });
      if (enabled) reasonInput.value = "";
      showResult(
        result,
        "ok",
        enabled ? "In maintenance: no new tasks go to it; the running ones finish." : "Maintenance ended: it takes tasks again.",
      );
      changed(server);
    } catch (err) {
      showResult(result, "error", h("strong", null, `${enabled ? "Maintenance" : "Ending maintenance"} failed: `), failure(err));
    } finally {
      busy = false;
      on.disabled = off.disabled = false;
    }
  }
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    set(true);
  });
  off.addEventListener("click", () => set(false));

  function update(server) {
    root.hidden = false;
    const m = server.maintenance || {};
    on.hidden = reasonField.hidden = Boolean(m.enabled);
    off.hidden = !m.enabled;
    // h() flattens nested arrays; replaceChildren() would print them as text.
    status.replaceChildren(
      m.enabled
        ? h("span", null, h("strong", null, "In maintenance"), m.since ? [" since ", at(m.since)] : null, m.reason ? [": ", m.reason] : null, ". No new tasks go to it.")
        : "Not in maintenance: it takes new tasks. In maintenance it gets none; its running tasks finish and its health checks go on.",
    );
  }
  return { root, update };
}

function back() {
  return h("p", { class: "crumbs" }, link(["servers"], "← Servers"));
}

function renderServer(server, stats) {
  const state = serverState(server);
  const health = server.health || {};
  const maintenance = server.maintenance || {};
  const top = [
    back(),
    h(
      "div",
      { class: "page-head" },
      h("h1", null, server.name || server.id),
      badge(state),
      h("span", { class: "muted mono" }, server.id),
    ),
  ];
  if (state === "offline") top.push(notice("error", h("strong", null, "Offline: "), reason(server)));
  if (state === "ejected") top.push(notice("error", h("strong", null, "Out of rotation: "), ejection(health)));
  if (state === "draining" || state === "maintenance") {
    top.push(
      notice(
        state === "draining" ? "warn" : "maint",
        h("strong", null, state === "draining" ? "Draining: " : "Maintenance: "),
        maintenance.reason || "no reason given",
        state === "draining" ? ` (${num(server.inFlight)} task(s) still running, none new)` : "",
      ),
    );
  }
  // Out of rotation for a reason of its own, and in maintenance too: say both.
  if ((state === "draining" || state === "maintenance") && health.ejected) {
    top.push(notice("error", h("strong", null, "Also out of rotation: "), ejection(health)));
  }
  const out = [];

  out.push(
    h(
      "div",
      { class: "grid grid-2" },
      card(
        "Server",
        facts([
          ["state", badge(state)],
          ["maintenance", maintenance.enabled ? h("span", null, "on", maintenance.since ? [" since ", at(maintenance.since)] : null, maintenance.reason ? `: ${maintenance.reason}` : "") : "off"],
          ["in flight / max", load(server.inFlight, server.max_concurrency)],
          ["held slots", server.heldSlots ? h("span", { title: "slots of cancelled or timed-out attempts its backend has not let go of" }, num(server.heldSlots)) : "0"],
          ["removed when gone", server.autoRemove === undefined ? null : server.autoRemove ? "yes (autoRemove)" : "no (autoRemove off)"],
          ["models", modelList(server.models)],
          ["provider", server.provider],
          ["weight", num(server.weight)],
          ["mode", server.async ? "asynchronous (202 + callback)" : "synchronous"],
          ["predict URL", h("span", { class: "mono small" }, server.endpoints?.predict ?? "—")],
          ["health URL", h("span", { class: "mono small" }, server.endpoints?.health ?? "none (heartbeats)")],
          ["registered", at(server.registeredAt)],
          ["last heartbeat", at(server.lastHeartbeat)],
          ["reported load", server.load === null || server.load === undefined ? null : String(JSON.stringify(server.load))],
        ]),
      ),
      card(
        "Health",
        facts([
          ["checked by", server.checkedBy ? h("span", { class: "mono small" }, server.checkedBy) : null],
          ["last check", at(health.lastCheckAt)],
          ["last success", at(health.lastSuccessAt)],
          ["next check", health.nextCheckAt ? when(health.nextCheckAt) : null],
          ["check interval", health.checkIntervalS === null || health.checkIntervalS === undefined ? null : `${num(health.checkIntervalS)} s`],
          ["successes in a row", num(health.consecutiveSuccesses)],
          ["failures in a row", num(health.consecutiveFailures)],
          ["failed dispatches in a row", num(health.dispatchFailures)],
          ["offline since", health.offlineSince ? at(health.offlineSince) : null],
          ["ejected", health.ejected === undefined ? null : health.ejected ? h("span", { class: "text-bad" }, `yes, for ${EJECTION_REASONS[health.ejectionReason] || health.ejectionReason || "its dispatches"}`) : "no"],
          ["ejected until", health.ejectedUntil ? at(health.ejectedUntil) : null],
          ["ejections in a row", health.ejections === undefined ? null : num(health.ejections)],
          ["rejections in a row", health.consecutiveRejections === undefined ? null : num(health.consecutiveRejections)],
          ["last error", health.lastError ? h("span", { class: "text-bad" }, health.lastError) : null],
        ]),
      ),
    ),
  );

  if (stats instanceof ApiError) {
    out.push(card("Attempts", notice("warn", `Stats unavailable: ${stats.message}`)));
    return { top, body: out };
  }
  const failures = Object.entries(stats.failures).sort((a, b) => b[1] - a[1]);
  const failed = failures.reduce((sum, [, n]) => sum + n, 0);
  out.push(
    card(
      `Last ${span(stats.windowS)}`,
      h(
        "div",
        { class: "big-numbers" },
        big("total", stats.attempts, "attempts"),
        big("online", stats.successes, "succeeded"),
        big(failed ? "offline" : "total", failed, "failed"),
        big("total", duration(stats.latencyMs.p50), "p50 latency", true),
        big("total", duration(stats.latencyMs.p95), "p95 latency", true),
      ),
      failures.length
        ? h(
            "p",
            { class: "failures" },
            "Failures: ",
            failures.map(([code, n], i) => [i ? ", " : "", searchLink("tasks", { server_id: server.id, error_code: code }, code, { class: "mono" }), ` × ${num(n)}`]),
          )
        : null,
    ),
  );

  out.push(
    card(
      "Recent attempts",
      table(
        [
          { label: "task" },
          { label: "attempt", cls: "num" },
          { label: "started" },
          { label: "took", cls: "num" },
          { label: "outcome" },
          { label: "error", cls: "wide" },
        ],
        stats.recentAttempts.map((a) => ({
          attrs: { "data-task-id": a.taskId },
          cells: [
            link(["tasks", a.taskId], shortId(a.taskId), { class: "mono", title: a.taskId }),
            num(a.attempt),
            at(a.startedAt),
            a.endedAt ? between(a.startedAt, a.endedAt) : "—",
            outcome(a),
            a.error ? h("span", { class: "text-bad" }, a.error) : h("span", { class: "muted" }, "—"),
          ],
        })),
        { empty: "No attempts on this server yet." },
      ),
      h("p", { class: "small" }, searchLink("tasks", { server_id: server.id }, "All tasks of this server →")),
    ),
  );
  return { top, body: out };
}

function big(kind, value, label, text = false) {
  return h("div", { class: `big big-${kind}` }, h("span", { class: "big-value" }, text ? value : num(value)), h("span", { class: "big-label" }, label));
}

/** An attempt's outcome: running, ok, or its errorCode. */
export function outcome(attempt) {
  if (!attempt.endedAt) return badge("running");
  if (!attempt.errorCode && !attempt.error) return badge("ok");
  if (!attempt.errorCode) return badge("error");
  return badge(attempt.errorCode === "cancelled" ? "cancelled" : "error", attempt.errorCode);
}

function span(seconds) {
  if (seconds === 3600) return "hour";
  if (seconds % 3600 === 0) return `${seconds / 3600} hours`;
  return `${Math.round(seconds / 60)} min`;
}
