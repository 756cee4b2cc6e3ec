// Overview: counts by status, servers, throughput and failure rate over time, queue per model.

import { ApiError, get, getAll } from "./api.js";
import { timeChart } from "./chart.js";
import { badge, card, clock, duration, h, hashWithQuery, hourMinute, link, notice, num, percent, searchLink, table } from "./dom.js";

const STATUSES = ["WAITING", "PROCESSING", "FINISHED", "FAILED", "CANCELLED"];

export function overviewView() {
  const root = h("div", { class: "page" });
  let last = "";

  async function refresh() {
    const [stats, hourly] = await getAll([get("/api/stats"), get("/api/stats/hourly")]);
    if (stats instanceof ApiError) throw stats;
    const key = JSON.stringify([stats, hourly instanceof ApiError ? hourly.message : hourly]);
    if (key === last) return;
    last = key;
    root.replaceChildren(...render(stats, hourly));
  }

  return { root, refresh };
}

function render(stats, hourly) {
  const counts = stats.tasks.byStatus;
  const servers = stats.servers;
  const t = stats.throughput;
  const out = [
    h(
      "div",
      { class: "page-head" },
      h("h1", null, "Overview"),
      h("span", { class: "muted" }, `as of ${clock(stats.generatedAt)}`),
    ),
  ];

  out.push(
    h(
      "div",
      { class: "tiles", id: "status-counts" },
      STATUSES.map((status) =>
        h(
          "a",
          {
            class: `tile tile-${status.toLowerCase()}`,
            href: hashWithQuery("tasks", { status }),
            "data-status": status,
            title: `Search ${status} tasks`,
          },
          h("span", { class: "tile-label" }, status),
          h("span", { class: "tile-value" }, num(counts[status] ?? 0)),
        ),
      ),
    ),
  );

  if (stats.modelsWithoutServer.length) {
    out.push(
      notice(
        "warn",
        h("strong", null, "Tasks wait for models no server serves: "),
        stats.modelsWithoutServer.map((m, i) => [
          i ? ", " : "",
          searchLink("tasks", { model: m.model, status: "WAITING" }, m.model, { class: "mono" }),
          ` (${num(m.waiting)} waiting)`,
        ]),
        ". Register a server for them, or check the model names for a typo.",
      ),
    );
  }

  out.push(
    h(
      "div",
      { class: "grid grid-3" },
      card(
        "Servers",
        h(
          "div",
          { class: "big-numbers", id: "server-counts" },
          bigNumber("online", servers.online, "online"),
          bigNumber("offline", servers.offline, "offline"),
          bigNumber("busy", servers.busy, "busy"),
          bigNumber("total", servers.total, "total"),
        ),
        h("p", { class: "muted small" }, "Busy: online with every slot in use. ", link(["servers"], "All servers →")),
      ),
      card(
        "Throughput",
        table(
          [{ label: "window" }, { label: "finished", cls: "num" }, { label: "failed", cls: "num" }, { label: "per min", cls: "num" }, { label: "failure rate", cls: "num" }],
          [
            ["1 min", t["1m"]],
            ["15 min", t["15m"]],
            ["1 hour", t["1h"]],
          ].map(([label, w]) => [
            label,
            num(w.finished),
            num(w.failed),
            num(w.finishedPerMin + w.failedPerMin),
            h("span", { class: w.failed ? "text-bad" : null }, percent(w.failed, w.finished + w.failed)),
          ]),
          { cls: "compact" },
        ),
      ),
      card(
        `Latency (last ${Math.round(stats.latency.windowS / 60)} min)`,
        table(
          [{ label: "" }, { label: "p50", cls: "num" }, { label: "p95", cls: "num" }, { label: "tasks", cls: "num" }],
          [
            ["queue wait", stats.latency.queueWaitMs],
            ["processing", stats.latency.processingMs],
          ].map(([label, p]) => [label, duration(p.p50), duration(p.p95), num(p.count)]),
          { cls: "compact" },
        ),
        h("p", { class: "muted small" }, "Queue wait: created → first attempt. Processing: attempt → result."),
      ),
    ),
  );

  const minutes = t.perMinute.map((m) => ({
    t: m.minute,
    finished: m.finished,
    failed: m.failed,
    created: m.created,
    rate: m.finished + m.failed ? (100 * m.failed) / (m.finished + m.failed) : null,
  }));
  out.push(
    h(
      "div",
      { class: "grid grid-2" },
      card(
        "Last hour, per minute",
        timeChart({
          width: 500,
          label: "tasks finished and failed per minute, last hour",
          points: minutes,
          series: [
            { key: "finished", label: "finished", kind: "bar" },
            { key: "failed", label: "failed", kind: "bar" },
            { key: "created", label: "created", kind: "line" },
          ],
          xFormat: hourMinute,
          yFormat: (v) => num(v),
          tip: (p) => `${hourMinute(p.t)}: ${p.finished} finished, ${p.failed} failed, ${p.created} created`,
          empty: "no tasks in the last hour",
        }),
      ),
      card(
        "Failure rate, per minute",
        timeChart({
          width: 500,
          label: "share of finished tasks that failed, per minute, last hour",
          points: minutes,
          series: [{ key: "rate", label: "failed / (finished + failed)", kind: "line" }],
          yMax: 100,
          xFormat: hourMinute,
          yFormat: (v) => `${Math.round(v)}%`,
          tip: (p) => `${hourMinute(p.t)}: ${p.rate === null ? "nothing ended" : `${Math.round(p.rate)}% failed (${p.failed} of ${p.finished + p.failed})`}`,
          empty: "no task ended in the last hour",
        }),
      ),
    ),
  );

  if (hourly instanceof ApiError) {
    out.push(card("Last 24 hours", notice("error", `Cannot load /api/stats/hourly: ${hourly.message}`)));
  } else {
    out.push(
      card(
        "Last 24 hours, per hour",
        timeChart({
          label: "tasks per hour, last 24 hours",
          height: 160,
          points: hourly.hours.map((x) => ({ ...x, t: x.hour })),
          series: [
            { key: "finished", label: "finished", kind: "bar" },
            { key: "failed", label: "failed", kind: "bar" },
            { key: "created", label: "created", kind: "line" },
          ],
          xFormat: hourMinute,
          yFormat: (v) => num(v),
          tip: (p) =>
            `${hourMinute(p.t)}: ${p.finished} finished, ${p.failed} failed, ${p.created} created` +
            (p.meanProcessingMs === null ? "" : `, mean processing ${duration(p.meanProcessingMs)}`),
          empty: "no tasks in the last 24 hours",
        }),
      ),
    );
  }

  const outcomes = Object.entries(stats.attempts.byOutcome).sort((a, b) => b[1] - a[1]);
  out.push(
    h(
      "div",
      { class: "grid grid-2-1" },
      card(
        "Queue by model",
        table(
          [
            { label: "model" },
            { label: "waiting", cls: "num" },
            { label: "due now", cls: "num" },
            { label: "in flight / capacity", cls: "num" },
            { label: "servers online", cls: "num" },
          ],
          stats.queue.map((q) => [
            searchLink("tasks", { model: q.model }, q.model, { class: "mono" }),
            num(q.waiting),
            num(q.due),
            `${num(q.inFlight)} / ${num(q.capacity)}`,
            h("span", { class: q.serversOnline === 0 && q.waiting ? "text-bad" : null }, `${num(q.serversOnline)} of ${num(q.servers)}`),
          ]),
          { empty: "No model has waiting or running tasks.", cls: "queue-table" },
        ),
      ),
      card(
        `Attempt outcomes (last ${span(stats.attempts.windowS)})`,
        table(
          [{ label: "outcome" }, { label: "attempts", cls: "num" }],
          outcomes.map(([outcome, n]) => [
            outcomeLink(outcome),
            num(n),
          ]),
          { empty: "No attempts in this window." },
        ),
      ),
    ),
  );
  return out;
}

function bigNumber(kind, value, label) {
  return h("div", { class: `big big-${kind}` }, h("span", { class: "big-value" }, num(value)), h("span", { class: "big-label" }, label));
}

function outcomeLink(outcome) {
  if (outcome === "ok") return badge("ok", "ok");
  const params = outcome === "cancelled" ? { status: "CANCELLED" } : { error_code: outcome };
  return searchLink("tasks", params, outcome, { class: "mono" });
}

function span(seconds) {
  return seconds === 3600 ? "hour" : `${Math.round(seconds / 60)} min`;
}
