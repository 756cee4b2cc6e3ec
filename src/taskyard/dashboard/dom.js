// DOM building and formatting. Every string from the API is untrusted: it goes into the page
// as text (text nodes, textContent, attribute values), never as HTML.

const SVG_NS = "http://www.w3.org/2000/svg";

function append(parent, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(parent, child);
    else if (child instanceof Node) parent.appendChild(child);
    else parent.appendChild(document.createTextNode(String(child)));
  }
}

function setProps(el, props) {
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "style") {
      throw new Error("no inline styles: the dashboard runs under a strict CSP");
    } else if (key === "href" && !String(value).startsWith("#")) {
      throw new Error("links stay inside the dashboard");
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
}

/** An HTML element: h("td", {class: "num"}, "text", otherNode, [more]). */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  setProps(el, props);
  append(el, children);
  return el;
}

/** An SVG element, same shape as h(). */
export function s(tag, props, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setProps(el, props);
  append(el, children);
  return el;
}

/** A link to a dashboard route built from parts, each part encoded. */
export function link(parts, text, props = {}) {
  const path = parts.map((p) => encodeURIComponent(String(p))).join("/");
  return h("a", { ...props, href: `#/${path}` }, text);
}

export function hashWithQuery(page, params) {
  const query = new URLSearchParams(params).toString();
  return `#/${page}${query ? `?${query}` : ""}`;
}

/** A link to a dashboard page with a query: searchLink("tasks", {status: "FAILED"}, "failed"). */
export function searchLink(page, params, text, props = {}) {
  return h("a", { ...props, href: hashWithQuery(page, params) }, text);
}

// ---- formatting ------------------------------------------------------------------------------

const pad = (n) => String(n).padStart(2, "0");

/** A Date from epoch ms or an ISO 8601 string; null when absent or unreadable. */
export function toDate(value) {
  if (value === null || value === undefined || value === "") return null;
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? null : date;
}

export function clock(value) {
  const d = toDate(value);
  if (!d) return "—";
  const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  const today = new Date();
  if (d.toDateString() === today.toDateString()) return time;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time}`;
}

export function hourMinute(value) {
  const d = toDate(value);
  return d ? `${pad(d.getHours())}:${pad(d.getMinutes())}` : "";
}

/** "12 s ago", "in 3 s", "4 min ago", "2 h ago", "3 d ago". */
export function ago(value, now = Date.now()) {
  const d = toDate(value);
  if (!d) return "—";
  const diff = now - d.getTime();
  const abs = Math.abs(diff) / 1000;
  let text;
  if (abs < 1) return "just now";
  if (abs < 60) text = `${Math.round(abs)} s`;
  else if (abs < 3600) text = `${Math.round(abs / 60)} min`;
  else if (abs < 86400) text = `${Math.round(abs / 3600)} h`;
  else text = `${Math.round(abs / 86400)} d`;
  return diff >= 0 ? `${text} ago` : `in ${text}`;
}

/** A relative time ("12 s ago", kept current by the refresh loop), the exact time as tooltip. */
export function when(value) {
  const d = toDate(value);
  if (!d) return h("span", { class: "muted" }, "—");
  return h("time", { class: "rel", datetime: d.toISOString(), title: d.toLocaleString() }, ago(d));
}

/** The clock time, then how long ago: "23:59:08 · 10 s ago". */
export function at(value) {
  const d = toDate(value);
  if (!d) return h("span", { class: "muted" }, "—");
  return h("span", { class: "at" }, clock(d), h("span", { class: "muted" }, " · ", when(d)));
}

export function duration(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return "—";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
  const minutes = Math.floor(ms / 60_000);
  if (minutes < 60) return `${minutes} min ${Math.round((ms % 60_000) / 1000)} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

export function between(start, end) {
  const a = toDate(start);
  const b = toDate(end);
  return a && b ? duration(b.getTime() - a.getTime()) : "—";
}

const numberFormat = new Intl.NumberFormat("en", { maximumFractionDigits: 1 });

export function num(n) {
  if (n === null || n === undefined || !Number.isFinite(Number(n))) return "—";
  return numberFormat.format(Number(n));
}

export function percent(part, whole) {
  if (!whole) return "—";
  const value = (100 * part) / whole;
  return `${value < 10 && value > 0 ? value.toFixed(1) : Math.round(value)}%`;
}

/** The first 8 characters of a long id (a task's UUID); short ids whole. */
export function shortId(id) {
  const text = String(id ?? "");
  return text.length > 20 ? `${text.slice(0, 8)}…` : text;
}

// ---- common pieces ---------------------------------------------------------------------------

export function badge(kind, text = kind) {
  const cls = String(kind).toLowerCase().replace(/[^a-z0-9_-]/g, "");
  return h("span", { class: `badge badge-${cls}` }, text);
}

export function card(title, ...children) {
  return h("section", { class: "card" }, title ? h("h2", null, title) : null, ...children);
}

/** A table: columns [{label, cls?}], rows of cells (nodes or text); `empty` when no rows. */
export function table(columns, rows, { empty = "Nothing here.", cls = "" } = {}) {
  const head = h(
    "thead",
    null,
    h("tr", null, columns.map((c) => h("th", { class: c.cls || null, scope: "col" }, c.label))),
  );
  const body = h(
    "tbody",
    null,
    rows.length
      ? rows.map((row) =>
          h(
            "tr",
            row.attrs || null,
            (row.cells || row).map((cell, i) => h("td", { class: columns[i].cls || null }, cell)),
          ),
        )
      : h("tr", null, h("td", { class: "empty", colspan: columns.length }, empty)),
  );
  return h("div", { class: "table-wrap" }, h("table", { class: `table ${cls}` }, head, body));
}

/** A definition list from [label, value] pairs (null values are skipped). */
export function facts(pairs) {
  return h(
    "dl",
    { class: "facts" },
    pairs
      .filter((pair) => pair && pair[1] !== undefined)
      .map(([label, value]) =>
        h("div", null, h("dt", null, label), h("dd", null, value ?? h("span", { class: "muted" }, "—"))),
      ),
  );
}

export function notice(kind, ...children) {
  return h("div", { class: `notice ${kind}`, role: kind === "error" ? "alert" : null }, ...children);
}

/** Show one notice in a persistent result area (kind: ok, info, warn, error). */
export function showResult(area, kind, ...children) {
  area.replaceChildren(notice(kind, ...children));
  area.hidden = false;
}

/** An action's failure in words: the API's `error`, and the HTTP status when there was one. */
export function failure(err) {
  const message = err && err.message ? err.message : String(err);
  return err && err.status ? `${message} (HTTP ${err.status})` : message;
}

const JSON_DISPLAY_LIMIT = 200_000; // characters

export function jsonBlock(value) {
  let text = value === undefined ? "null" : JSON.stringify(value, null, 2);
  if (text.length > JSON_DISPLAY_LIMIT) {
    text = `${text.slice(0, JSON_DISPLAY_LIMIT)}\n… (${num(text.length)} characters, cut)`;
  }
  return h("pre", { class: "json" }, text);
}
