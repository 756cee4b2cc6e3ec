// Servers: the fleet table, and one server's health, stats and recent attempts.

import { ApiError, get, getAll } from "./api.js";
import { at, badge, between, card, duration, facts, h, link, notice, num, searchLink, shortId, table, when } from "./dom.js";

/** online, offline, or busy (online with every slot in use). */
export function serverState(server) {
  if (server.status !== "online") return "offline";
  return server.inFlight >= server.max_concurrency ? "busy" : "online";
}

/** Why the server is in its state, in words. */
function reason(server) {
  const health = server.health || {};
  const state = serverState(server);
  if (state === "offline") {
    if (health.lastError) return health.lastError;
    return health.lastCheckAt ? "failed its last check" : "not checked yet";
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
  const order = { offline: 0, busy: 1, online: 2 };
  sorted.sort((a, b) => order[a.state] - order[b.state] || String(a.server.name).localeCompare(String(b.server.name)));

  const out = [
    h(
      "div",
      { class: "page-head" },
      h("h1", null, "Servers"),
      h(
        "span",
        { class: "muted" },
        `${num(servers.length)} registered: ${count("online")} online, ${count("busy")} busy, ${count("offline")} offline`,
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
        h("span", { class: state === "offline" ? "reason text-bad" : "reason muted" }, reason(server)),
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

function modelList(models) {
  if (!models || !models.length) return h("span", { class: "muted" }, "any model");
  return h("span", { class: "models" }, models.map((m) => h("span", { class: "chip mono" }, m)));
}

// ---- one server ------------------------------------------------------------------------------

export function serverView(id) {
  const root = h("div", { class: "page" });
  let last = "";

  async function refresh() {
    const path = encodeURIComponent(id);
    const [server, stats] = await getAll([get(`/api/servers/${path}`), get(`/api/stats/servers/${path}`)]);
    if (server instanceof ApiError) {
      if (server.status !== 404) throw server;
      root.replaceChildren(
        back(),
        notice("error", `No server ${id}: it was never registered, or it has been removed.`),
      );
      last = "";
      return;
    }
    const key = JSON.stringify([server, stats instanceof ApiError ? stats.message : stats]);
    if (key === last) return;
    last = key;
    root.replaceChildren(...renderServer(server, stats));
  }
  return { root, refresh };
}

function back() {
  return h("p", { class: "crumbs" }, link(["servers"], "← Servers"));
}

function renderServer(server, stats) {
  const state = serverState(server);
  const health = server.health || {};
  const out = [
    back(),
    h(
      "div",
      { class: "page-head" },
      h("h1", null, server.name || server.id),
      badge(state),
      h("span", { class: "muted mono" }, server.id),
    ),
  ];
  if (state === "offline") out.push(notice("error", h("strong", null, "Offline: "), reason(server)));

  out.push(
    h(
      "div",
      { class: "grid grid-2" },
      card(
        "Server",
        facts([
          ["state", badge(state)],
          ["in flight / max", load(server.inFlight, server.max_concurrency)],
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
          ["last error", health.lastError ? h("span", { class: "text-bad" }, health.lastError) : null],
        ]),
      ),
    ),
  );

  if (stats instanceof ApiError) {
    out.push(card("Attempts", notice("warn", `Stats unavailable: ${stats.message}`)));
    return out;
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
  return out;
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
