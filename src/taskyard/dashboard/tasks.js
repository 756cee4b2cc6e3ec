// Tasks: the search (filters in the URL's hash, paging by cursor, retry or cancel everything it
// matches) and one task's detail (with Retry or Cancel).

import { ApiError, get, post, session } from "./api.js";
import { at, badge, between, card, clock, facts, failure, h, hashWithQuery, jsonBlock, link, notice, num, shortId, showResult, table, toDate, when } from "./dom.js";
import { outcome } from "./servers.js";

const STATUSES = ["WAITING", "PROCESSING", "FINISHED", "FAILED", "CANCELLED"];
const FINAL = new Set(["FINISHED", "FAILED", "CANCELLED"]);
const TEXT_FILTERS = [
  ["model", "model", "e.g. upscaler"],
  ["server_id", "server id", "e.g. gpu-1"],
  ["owner", "owner", "token sub"],
  ["error_code", "error code", "e.g. backend_error"],
];
const LIMITS = ["25", "50", "100", "200"];
const BULK_STEP = 100; // tasks per bulk call (the API's default `limit`)

// The bulk actions of the search: which statuses each applies to, and its words.
const BULK = {
  retry: { path: "/api/tasks/retry", statuses: ["FAILED", "CANCELLED"], verb: "Retry", doing: "Retrying", done: "retried" },
  cancel: { path: "/api/tasks/cancel", statuses: ["WAITING", "PROCESSING"], verb: "Cancel", doing: "Cancelling", done: "cancelled" },
};

/** The page sizes on offer, with the one in the URL among them. */
function limits(current) {
  const all = LIMITS.includes(current) || !/^\d+$/.test(current) ? LIMITS : [...LIMITS, current];
  return [...all].sort((a, b) => Number(a) - Number(b));
}

const pad = (n) => String(n).padStart(2, "0");

function toLocalInput(ms) {
  const d = ms ? toDate(Number(ms)) : null;
  if (!d) return "";
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

function fromLocalInput(value) {
  const d = value ? new Date(value) : null;
  return d && !Number.isNaN(d.getTime()) ? String(d.getTime()) : "";
}

export function tasksView(params) {
  const filters = new URLSearchParams();
  for (const [key, value] of params) {
    if (key === "status" || key === "limit" || key === "created_after" || key === "created_before" || TEXT_FILTERS.some(([k]) => k === key)) {
      filters.append(key, value);
    }
  }
  const results = h("div", { id: "task-results" });
  const root = h(
    "div",
    { class: "page" },
    h("div", { class: "page-head" }, h("h1", null, "Tasks"), h("span", { class: "muted" }, "newest first")),
    filterForm(filters),
    // Only an admin may act in bulk; a token whose roles cannot be read gets the bar, and the
    // API's 403 if it comes to that.
    session.mayAdminister ? bulkBar(filters, () => reload()) : null,
    results,
  );
  const cursors = [null]; // the cursor of each page so far: "previous" pops one
  let sequence = 0; // answers of superseded requests are dropped
  let last = "";

  async function refresh() {
    const mine = ++sequence;
    const query = new URLSearchParams(filters);
    if (!query.has("limit")) query.set("limit", "50");
    const cursor = cursors.at(-1);
    if (cursor) query.set("cursor", cursor);
    let page;
    try {
      page = await get("/api/tasks", query);
    } catch (err) {
      if (!(err instanceof ApiError) || err.status !== 400 || mine !== sequence) throw err;
      results.replaceChildren(badFilter(err));
      last = "";
      return;
    }
    if (mine !== sequence) return;
    const key = JSON.stringify([cursors.length, page]);
    if (key === last) return;
    last = key;
    results.replaceChildren(renderPage(page, Number(query.get("limit")), cursors.length, {
      previous: cursors.length > 1 ? () => move(() => cursors.pop()) : null,
      next: page.nextCursor ? () => move(() => cursors.push(page.nextCursor)) : null,
    }));
  }

  function move(change) {
    change();
    reload();
  }

  function reload() {
    last = "";
    refresh().catch((err) => {
      // the refresh loop reports errors; a click must not leave an unhandled rejection
      if (!(err instanceof ApiError)) console.error(err);
    });
  }

  return { root, refresh };
}

/** The filters in words: "status FAILED or CANCELLED · model upscale"; "" for none. */
function describe(filters) {
  const parts = [];
  const statuses = filters.getAll("status");
  if (statuses.length) parts.push(`status ${statuses.join(" or ")}`);
  for (const [key, label] of TEXT_FILTERS) if (filters.has(key)) parts.push(`${label} ${filters.get(key)}`);
  if (filters.has("created_after")) parts.push(`created after ${clock(Number(filters.get("created_after")))}`);
  if (filters.has("created_before")) parts.push(`created before ${clock(Number(filters.get("created_before")))}`);
  return parts.join(" · ");
}

/** "Retry all matching" and "Cancel all matching": a confirmation, then the API's bulk route
 * with the search's filters, BULK_STEP tasks a call, offering the next step while `more`. */
function bulkBar(filters, changed) {
  const query = new URLSearchParams();
  for (const [key, value] of filters) if (key !== "limit") query.append(key, value);
  query.set("limit", String(BULK_STEP));
  const chosen = filters.getAll("status");
  const bar = h("section", { class: "card bulk", id: "bulk-actions", "aria-live": "polite" });
  let total = 0; // tasks changed by this run of the action, over every "go on"

  /** The statuses of `kind` that the filters let through (none: the action has nothing to do). */
  const applicable = (kind) => BULK[kind].statuses.filter((x) => !chosen.length || chosen.includes(x));

  function idle(...message) {
    const buttons = Object.entries(BULK).map(([kind, spec]) => {
      const statuses = applicable(kind);
      return h(
        "button",
        {
          type: "button",
          class: kind === "cancel" ? "button danger" : "button",
          id: `bulk-${kind}`,
          disabled: !statuses.length,
          title: statuses.length ? `${spec.verb} the ${statuses.join(" and ")} tasks these filters match` : `These filters match no ${spec.statuses.join(" or ")} task`,
          onclick: () => ask(kind),
        },
        `${spec.verb} all matching…`,
      );
    });
    bar.replaceChildren(
      h("div", { class: "bulk-row" }, h("span", { class: "bulk-title" }, "Bulk"), ...buttons, h("span", { class: "muted small" }, `Filters: ${describe(filters) || "none (every task)"}`)),
      ...message,
    );
  }

  function ask(kind) {
    const spec = BULK[kind];
    const matching = describe(filters);
    total = 0;
    bar.replaceChildren(
      notice(
        "warn",
        h("strong", null, `${spec.verb} every ${applicable(kind).join(" or ")} task${matching ? ` matching ${matching}` : ", with no filter"}?`),
        ` Newest first, at most ${BULK_STEP} per step.`,
        kind === "retry" ? " Each goes back to WAITING with its id and history." : " Running ones are cancelled too.",
      ),
      h(
        "div",
        { class: "bulk-row" },
        h("button", { type: "button", class: kind === "cancel" ? "button danger-solid" : "button primary", id: "bulk-confirm", onclick: () => run(kind) }, `Yes, ${spec.verb.toLowerCase()} them`),
        h("button", { type: "button", class: "button subtle", id: "bulk-back", onclick: () => idle() }, "Back"),
      ),
    );
    bar.querySelector("#bulk-confirm").focus();
  }

  async function run(kind) {
    const spec = BULK[kind];
    for (const button of bar.querySelectorAll("button")) button.disabled = true;
    bar.append(h("p", { class: "muted", id: "bulk-busy" }, `${spec.doing}…`));
    let answer;
    try {
      answer = await post(spec.path, query);
    } catch (err) {
      idle(notice("error", h("strong", null, `${spec.verb} failed: `), failure(err)));
      return;
    }
    total += answer.count;
    const result = h(
      "span",
      { id: "bulk-result", "data-count": answer.count },
      `${num(answer.count)} ${spec.done}`,
      total !== answer.count ? ` (${num(total)} in all)` : "",
      answer.more ? `; more tasks match.` : answer.count ? "." : ": nothing matched.",
    );
    changed();
    if (!answer.more) {
      idle(notice("ok", result));
      return;
    }
    bar.replaceChildren(
      notice("ok", result),
      h(
        "div",
        { class: "bulk-row" },
        h("button", { type: "button", class: kind === "cancel" ? "button danger-solid" : "button primary", id: "bulk-continue", onclick: () => run(kind) }, `${spec.verb} the next ${BULK_STEP}`),
        h("button", { type: "button", class: "button subtle", id: "bulk-back", onclick: () => idle() }, "Stop here"),
      ),
    );
  }

  idle();
  return bar;
}

function badFilter(err) {
  const details = Array.isArray(err.details) ? err.details : [];
  return notice(
    "error",
    h("strong", null, "Bad filter: "),
    err.message,
    details.length
      ? h("ul", null, details.map((d) => h("li", null, `${(d.loc || []).slice(1).join(".") || "query"}: ${d.msg || ""}`)))
      : null,
  );
}

function filterForm(filters) {
  const chosen = new Set(filters.getAll("status"));
  const form = h(
    "form",
    { class: "card filters", id: "task-filters", autocomplete: "off" },
    h(
      "fieldset",
      { class: "statuses" },
      h("legend", null, "status"),
      STATUSES.map((status) =>
        h(
          "label",
          { class: `chip-toggle status-${status.toLowerCase()}` },
          h("input", { type: "checkbox", name: "status", value: status, checked: chosen.has(status) }),
          h("span", null, status),
        ),
      ),
    ),
    h(
      "div",
      { class: "filter-fields" },
      TEXT_FILTERS.map(([key, label, placeholder]) =>
        h(
          "label",
          { class: "field" },
          h("span", null, label),
          h("input", { type: "text", name: key, value: filters.get(key) ?? "", placeholder, spellcheck: "false" }),
        ),
      ),
      h(
        "label",
        { class: "field" },
        h("span", null, "created after"),
        h("input", { type: "datetime-local", name: "created_after", value: toLocalInput(filters.get("created_after")) }),
      ),
      h(
        "label",
        { class: "field" },
        h("span", null, "created before"),
        h("input", { type: "datetime-local", name: "created_before", value: toLocalInput(filters.get("created_before")) }),
      ),
      h(
        "label",
        { class: "field field-small" },
        h("span", null, "per page"),
        h(
          "select",
          { name: "limit" },
          limits(filters.get("limit") ?? "50").map((n) => h("option", { value: n, selected: (filters.get("limit") ?? "50") === n }, n)),
        ),
      ),
    ),
    h(
      "div",
      { class: "filter-actions" },
      h("button", { type: "submit", class: "button primary", id: "search" }, "Search"),
      h("button", { type: "button", class: "button subtle", id: "clear-filters" }, "Clear"),
    ),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const next = new URLSearchParams();
    for (const status of data.getAll("status")) next.append("status", status);
    for (const [key] of TEXT_FILTERS) {
      const value = String(data.get(key) || "").trim();
      if (value) next.set(key, value);
    }
    for (const key of ["created_after", "created_before"]) {
      const ms = fromLocalInput(String(data.get(key) || ""));
      if (ms) next.set(key, ms);
    }
    if (data.get("limit") && data.get("limit") !== "50") next.set("limit", String(data.get("limit")));
    go(hashWithQuery("tasks", next));
  });
  form.querySelector("#clear-filters").addEventListener("click", () => go("#/tasks"));
  return form;
}

function go(hash) {
  if (location.hash === hash) window.dispatchEvent(new HashChangeEvent("hashchange"));
  else location.hash = hash;
}

function renderPage(page, limit, number, { previous, next }) {
  const columns = [
    { label: "task" },
    { label: "status" },
    { label: "model" },
    { label: "server" },
    { label: "owner" },
    { label: "attempts", cls: "num" },
    { label: "error" },
    { label: "created" },
    { label: "ended" },
    { label: "took", cls: "num" },
  ];
  const rows = page.tasks.map((t) => ({
    attrs: { "data-task-id": t.id, "data-status": t.status },
    cells: [
      link(["tasks", t.id], shortId(t.id), { class: "mono strong", title: t.id }),
      badge(t.status),
      h("span", { class: "mono" }, t.model),
      t.serverId ? link(["servers", t.serverId], t.serverId, { class: "mono" }) : h("span", { class: "muted" }, "—"),
      t.owner ?? "—",
      num(t.attempts.length),
      t.errorCode ? h("span", { class: "mono text-bad", title: t.error || "" }, t.errorCode) : h("span", { class: "muted" }, "—"),
      when(t.createdAt),
      t.finishedAt ? when(t.finishedAt) : h("span", { class: "muted" }, "—"),
      t.finishedAt ? between(t.createdAt, t.finishedAt) : "—",
    ],
  }));
  const first = (number - 1) * limit + 1;
  const summary = page.tasks.length
    ? `tasks ${num(first)}–${num(first + page.tasks.length - 1)}${page.nextCursor ? ", more on the next page" : ""}`
    : "";
  return h(
    "div",
    { class: "card" },
    table(columns, rows, { empty: number > 1 ? "No more tasks." : "No task matches these filters.", cls: "tasks-table" }),
    h(
      "div",
      { class: "pager" },
      h("button", { type: "button", class: "button", id: "prev-page", disabled: !previous, onclick: previous || null }, "← Previous"),
      h("span", { class: "muted", id: "page-info" }, `Page ${num(number)}${summary ? ` · ${summary}` : ""}`),
      h("button", { type: "button", class: "button", id: "next-page", disabled: !next, onclick: next || null }, "Next →"),
    ),
  );
}

// ---- one task --------------------------------------------------------------------------------

const WAITING_REASONS = {
  no_server_for_model: "No server serves this model",
  no_server_online: "No server of this model is online",
  all_busy: "Every server of this model is busy",
  backoff: "Waiting to retry after a failed attempt",
  maintenance: "The servers of this model are in maintenance",
  queued: "Queued: goes with the next dispatch",
};

// Retry and Cancel on a task's page: the statuses each applies to, and its words.
const TASK_ACTIONS = {
  retry: { statuses: ["FAILED", "CANCELLED"], label: "Retry", cls: "button primary", done: "Retried: back in the queue with the same id; its attempts so far stay below." },
  cancel: { statuses: ["WAITING", "PROCESSING"], label: "Cancel task", cls: "button danger", done: "Cancelled." },
};

export function taskView(id) {
  const root = h("div", { class: "page" });
  // Kept across re-renders, so the answer to a click stays on screen while the page refreshes.
  const result = h("div", { class: "action-result", id: "task-action-result", hidden: true, "aria-live": "polite" });
  let last = "";
  let sequence = 0; // an action refreshes at once: the loop's older answer must not win

  async function refresh() {
    const mine = ++sequence;
    let body;
    try {
      body = await get(`/api/task/${encodeURIComponent(id)}`);
    } catch (err) {
      if (mine !== sequence) return;
      if (!(err instanceof ApiError) || err.status !== 404) throw err;
      root.replaceChildren(back(), notice("error", `No task ${id} (or not one this token may see).`));
      last = "";
      return;
    }
    if (mine !== sequence) return;
    const key = JSON.stringify(body);
    if (key === last) return;
    last = key;
    const [crumbs, head, ...rest] = renderTask(body.taskDetails, act);
    root.replaceChildren(crumbs, head, result, ...rest);
  }

  async function act(kind) {
    const spec = TASK_ACTIONS[kind];
    for (const button of root.querySelectorAll(".task-actions button")) button.disabled = true;
    try {
      await post(`/api/task/${encodeURIComponent(id)}/${kind}`);
      showResult(result, "ok", spec.done);
    } catch (err) {
      showResult(result, "error", h("strong", null, `${spec.label} failed: `), failure(err));
    }
    last = ""; // re-render even if nothing changed, so the buttons come back
    try {
      await refresh();
    } catch (err) {
      // the refresh loop reports it on its next turn
      if (!(err instanceof ApiError)) console.error(err);
    }
  }
  return { root, refresh };
}

function taskActions(t, act) {
  const buttons = Object.entries(TASK_ACTIONS)
    .filter(([, spec]) => spec.statuses.includes(t.status))
    .map(([kind, spec]) => h("button", { type: "button", class: spec.cls, id: `task-${kind}`, onclick: () => act(kind) }, spec.label));
  return buttons.length ? h("div", { class: "task-actions" }, buttons) : null;
}

function back() {
  return h("p", { class: "crumbs" }, h("a", { href: "#/tasks", id: "back-to-tasks" }, "← Tasks"));
}

function renderTask(t, act) {
  const out = [
    back(),
    h("div", { class: "page-head" }, h("h1", { class: "mono" }, t.id), badge(t.status), taskActions(t, act)),
  ];
  if (t.status === "WAITING" && t.waiting) out.push(waitingNotice(t.waiting));
  if (t.status === "FAILED") {
    out.push(
      notice("error", h("strong", null, `Failed${t.errorCode ? ` (${t.errorCode})` : ""}: `), t.error || "no error text"),
    );
  }

  out.push(
    card(
      "Task",
      facts([
        ["status", badge(t.status)],
        ["model", h("span", { class: "mono" }, t.model)],
        ["owner", t.owner],
        ["priority", num(t.priority)],
        ["server", t.serverId ? link(["servers", t.serverId], t.serverId, { class: "mono" }) : null],
        ["attempts", num(t.attempts.length)],
        ["progress", t.progress === null || t.progress === undefined ? null : String(typeof t.progress === "object" ? JSON.stringify(t.progress) : t.progress)],
        ["created", at(t.createdAt)],
        ["started", at(t.startedAt)],
        ["finished", at(t.finishedAt)],
        ["updated", at(t.updatedAt)],
        ["queue wait", between(t.createdAt, t.startedAt)],
        ["total time", t.finishedAt ? between(t.createdAt, t.finishedAt) : null],
        ["error code", t.errorCode ? h("span", { class: "mono text-bad" }, t.errorCode) : null],
        ["callback URL", t.callbackUrl ? h("span", { class: "mono small" }, t.callbackUrl) : null],
      ]),
    ),
  );

  out.push(
    card(
      "Attempts",
      table(
        [
          { label: "#", cls: "num" },
          { label: "server" },
          { label: "node" },
          { label: "started" },
          { label: "ended" },
          { label: "took", cls: "num" },
          { label: "outcome" },
          { label: "error", cls: "wide" },
        ],
        t.attempts.map((a) => ({
          attrs: { class: "attempt", "data-attempt": a.attempt },
          cells: [
            num(a.attempt),
            a.serverId ? link(["servers", a.serverId], a.serverId, { class: "mono" }) : "—",
            a.nodeId ? h("span", { class: "mono small", title: a.nodeId }, shortId(a.nodeId)) : "—",
            at(a.startedAt),
            a.endedAt ? clock(a.endedAt) : h("span", { class: "muted" }, "—"),
            a.endedAt ? between(a.startedAt, a.endedAt) : "—",
            outcome(a),
            a.error ? h("span", { class: "text-bad" }, a.error) : h("span", { class: "muted" }, "—"),
          ],
        })),
        { empty: "No attempt yet.", cls: "attempts-table" },
      ),
    ),
  );

  out.push(
    h(
      "div",
      { class: "grid grid-2" },
      card("Request", jsonBlock(t.request)),
      card("Result", t.result === null || t.result === undefined ? h("p", { class: "muted" }, FINAL.has(t.status) ? "No result." : "No result yet.") : jsonBlock(t.result)),
    ),
  );
  return out;
}

function waitingNotice(w) {
  const title = WAITING_REASONS[w.reason] || w.reason;
  return notice(
    w.reason === "queued" ? "info" : "warn",
    h("strong", null, `Why it waits: ${title}. `),
    w.detail,
    w.position !== null && w.position !== undefined ? ` ${num(w.position)} task(s) of this model are ahead of it.` : "",
    w.retryAt ? h("span", null, " Next attempt ", when(w.retryAt), ".") : "",
  );
}
