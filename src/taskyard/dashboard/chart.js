// A small SVG time chart: stacked bars and lines over evenly spaced points.
// Colours come from CSS classes (app.css: .s-<key>), so nothing here is an inline style.

import { h, s } from "./dom.js";

// viewBox units; the SVG scales to its container's width, so pass about the width it gets
// on a wide screen (a full-width card: 1000, half of one: 500) to keep its text near 12 px.
const WIDTH = 1000;
const MARGIN = { top: 12, right: 24, bottom: 26, left: 52 };

const TICKS = 4; // gridlines above zero

/** A "nice" axis maximum at or above `value`: TICKS times a round step (1, 2, 2.5, 3, 4 or 5
 * times a power of ten; whole steps only for `integer` data such as counts). */
function niceMax(value, integer) {
  if (!(value > 0)) return integer ? TICKS : 1;
  const raw = value / TICKS;
  const power = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 2.5, 3, 4, 5, 10]) {
    const step = m * power;
    if (integer && !Number.isInteger(step)) continue;
    if (step >= raw) return step * TICKS;
  }
  return 10 * power * TICKS;
}

/**
 * timeChart({points, series, height, yMax, yFormat, xFormat, tip, label})
 *   points: [{t, <key>: number|null, ...}] oldest first, evenly spaced
 *   series: [{key, label, kind: "bar" | "line"}]; bars stack in the order given
 *   tip(point): the tooltip text of one column
 */
export function timeChart({ points, series, width = WIDTH, height = 200, yMax, yFormat = String, xFormat, tip, label, empty }) {
  const bars = series.filter((x) => x.kind === "bar");
  const lines = series.filter((x) => x.kind === "line");
  const plotW = width - MARGIN.left - MARGIN.right;
  const plotH = height - MARGIN.top - MARGIN.bottom;
  const n = Math.max(points.length, 1);
  const slot = plotW / n;

  let top = 0;
  for (const p of points) {
    top = Math.max(top, bars.reduce((sum, b) => sum + (Number(p[b.key]) || 0), 0));
    for (const l of lines) if (p[l.key] !== null && p[l.key] !== undefined) top = Math.max(top, Number(p[l.key]));
  }
  const integer = points.every((p) => series.every((x) => p[x.key] === null || p[x.key] === undefined || Number.isInteger(Number(p[x.key]))));
  const max = yMax ?? niceMax(top, integer);
  const y = (v) => MARGIN.top + plotH - (Math.min(v, max) / max) * plotH;
  const xCenter = (i) => MARGIN.left + slot * i + slot / 2;

  const svg = s("svg", {
    class: "chart",
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": label || "chart",
  });

  // grid and y axis labels
  for (let i = 0; i <= TICKS; i++) {
    const value = (max * i) / TICKS;
    const gy = y(value);
    svg.append(
      s("line", { class: i === 0 ? "axis" : "gridline", x1: MARGIN.left, x2: width - MARGIN.right, y1: gy, y2: gy }),
      s("text", { class: "tick", x: MARGIN.left - 8, y: gy + 4, "text-anchor": "end" }, yFormat(value)),
    );
  }

  // x axis labels: about six, evenly spread, always the last one
  const every = Math.max(1, Math.ceil(points.length / 6));
  points.forEach((p, i) => {
    if ((points.length - 1 - i) % every !== 0) return;
    svg.append(
      s("text", { class: "tick", x: xCenter(i), y: height - 8, "text-anchor": "middle" }, xFormat ? xFormat(p.t) : String(p.t)),
    );
  });

  // stacked bars
  const barW = Math.max(1, Math.min(slot * 0.72, 40));
  points.forEach((p, i) => {
    let base = 0;
    for (const b of bars) {
      const v = Number(p[b.key]) || 0;
      if (v <= 0) continue;
      const y0 = y(base);
      const y1 = y(base + v);
      svg.append(
        s("rect", {
          class: `bar s-${b.key}`,
          x: xCenter(i) - barW / 2,
          y: y1,
          width: barW,
          height: Math.max(0.5, y0 - y1),
        }),
      );
      base += v;
    }
  });

  // lines, broken where a value is missing
  for (const l of lines) {
    let d = "";
    let pen = false;
    points.forEach((p, i) => {
      const v = p[l.key];
      if (v === null || v === undefined) {
        pen = false;
        return;
      }
      d += `${pen ? "L" : "M"}${xCenter(i).toFixed(1)},${y(Number(v)).toFixed(1)}`;
      pen = true;
    });
    if (d) svg.append(s("path", { class: `line s-${l.key}`, d }));
    // dots where there is something to see: non-zero values, and lone points of a broken line
    points.forEach((p, i) => {
      const v = p[l.key];
      if (v === null || v === undefined || (Number(v) === 0 && !l.zeroDots)) return;
      svg.append(s("circle", { class: `dot s-${l.key}`, cx: xCenter(i), cy: y(Number(v)), r: 3 }));
    });
  }

  // one hover target per column, with a native tooltip
  points.forEach((p, i) => {
    svg.append(
      s(
        "rect",
        { class: "hit", x: MARGIN.left + slot * i, y: MARGIN.top, width: slot, height: plotH },
        s("title", null, tip ? tip(p) : ""),
      ),
    );
  });

  if (empty && top === 0) {
    svg.append(
      s("text", { class: "chart-empty", x: MARGIN.left + plotW / 2, y: MARGIN.top + plotH / 2, "text-anchor": "middle" }, empty),
    );
  }

  const legend = h(
    "div",
    { class: "legend" },
    series.map((x) => h("span", null, h("i", { class: `swatch ${x.kind} s-${x.key}` }), x.label)),
  );
  return h("figure", { class: "chart-figure" }, svg, legend);
}
