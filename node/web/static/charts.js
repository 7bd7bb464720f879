// Small SVG charts drawn by hand: bars, stacked bars and lines. No dependencies.
// Each function returns an <svg> element sized by viewBox (it scales to its container).

const NS = "http://www.w3.org/2000/svg";

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== null && v !== undefined) el.setAttribute(k, String(v));
  for (const c of children) {
    if (c === null || c === undefined) continue;
    el.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
  }
  return el;
}

// "Nice" axis maximum and ticks for a value range starting at lo.
export function niceTicks(lo, hi, count = 4) {
  if (!(hi > lo)) hi = lo + 1;
  const raw = (hi - lo) / count;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((st) => st >= raw) || 10 * mag;
  const top = Math.ceil(hi / step) * step;
  const bottom = Math.floor(lo / step) * step;
  const ticks = [];
  for (let v = bottom; v <= top + step / 2; v += step) ticks.push(Number(v.toFixed(10)));
  return { min: bottom, max: top, ticks };
}

function frame(width, height, title) {
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img",
    "aria-label": title || "chart", preserveAspectRatio: "xMidYMid meet" });
  if (title) svg.appendChild(s("title", {}, title));
  return svg;
}

function yAxis(svg, { ticks, y, left, right, fmt }) {
  for (const t of ticks) {
    const yy = y(t);
    svg.appendChild(s("line", { x1: left, x2: right, y1: yy, y2: yy, class: "grid" }));
    svg.appendChild(s("text", { x: left - 6, y: yy + 4, class: "tick", "text-anchor": "end" }, fmt(t)));
  }
}

function axisLabel(svg, text, x, y, rotate = false) {
  if (!text) return;
  svg.appendChild(s("text", { x, y, class: "axis-label", "text-anchor": "middle",
    transform: rotate ? `rotate(-90 ${x} ${y})` : null }, text));
}

function emptyNote(svg, width, height, text = "No data yet") {
  svg.appendChild(s("text", { x: width / 2, y: height / 2, class: "empty", "text-anchor": "middle" }, text));
  return svg;
}

const M = { top: 14, right: 14, bottom: 40, left: 52 };

// data: [{label, value, cls?, title?}]
export function barChart(data, { width = 560, height = 240, title = "", xLabel = "", yLabel = "",
  fmt = (v) => String(v), marker = null } = {}) {
  const svg = frame(width, height, title);
  if (!data.length) return emptyNote(svg, width, height);
  const { max, ticks } = niceTicks(0, Math.max(...data.map((d) => d.value), 1));
  const left = M.left, right = width - M.right, top = M.top, bottom = height - M.bottom;
  const y = (v) => bottom - (v / max) * (bottom - top);
  yAxis(svg, { ticks, y, left, right, fmt });
  const slot = (right - left) / data.length;
  const bw = Math.max(2, Math.min(64, slot * 0.7));
  data.forEach((d, i) => {
    const cx = left + slot * (i + 0.5);
    const g = s("g", { class: `bar-group ${d.cls || ""}`, "data-label": d.label, "data-value": d.value });
    g.appendChild(s("rect", { x: cx - bw / 2, y: y(d.value), width: bw, height: Math.max(0, bottom - y(d.value)),
      class: `col ${d.cls || ""}`, rx: 2 }, s("title", {}, d.title || `${d.label}: ${fmt(d.value)}`)));
    if (d.value > 0 && data.length <= 16) {
      g.appendChild(s("text", { x: cx, y: y(d.value) - 4, class: "value", "text-anchor": "middle" }, fmt(d.value)));
    }
    if (data.length <= 24 || i % Math.ceil(data.length / 12) === 0) {
      g.appendChild(s("text", { x: cx, y: bottom + 16, class: "tick", "text-anchor": "middle" }, d.label));
    }
    svg.appendChild(g);
  });
  if (marker !== null) {
    const i = data.findIndex((d) => String(d.label) === String(marker.label));
    if (i >= 0) {
      const x = left + slot * i;
      svg.appendChild(s("line", { x1: x, x2: x, y1: top, y2: bottom, class: "marker" }));
      svg.appendChild(s("text", { x: x - 4, y: top + 10, class: "marker-label", "text-anchor": "end" }, marker.text));
    }
  }
  svg.appendChild(s("line", { x1: left, x2: right, y1: bottom, y2: bottom, class: "axis" }));
  axisLabel(svg, xLabel, (left + right) / 2, height - 6);
  axisLabel(svg, yLabel, 14, (top + bottom) / 2, true);
  return svg;
}

// categories: [label...]; series: [{name, cls, values: [number...]}] stacked bottom-up.
export function stackedBarChart(categories, series, { width = 560, height = 240, title = "", xLabel = "",
  yLabel = "", fmt = (v) => String(v) } = {}) {
  const svg = frame(width, height + 22, title);
  if (!categories.length) return emptyNote(svg, width, height);
  const totals = categories.map((_, i) => series.reduce((a, se) => a + (se.values[i] || 0), 0));
  const { max, ticks } = niceTicks(0, Math.max(...totals, 1));
  const left = M.left, right = width - M.right, top = M.top + 22, bottom = height + 22 - M.bottom;
  const y = (v) => bottom - (v / max) * (bottom - top);
  yAxis(svg, { ticks, y, left, right, fmt });
  const slot = (right - left) / categories.length;
  const bw = Math.max(2, Math.min(40, slot * 0.7));
  const every = Math.ceil(categories.length / 12);
  categories.forEach((cat, i) => {
    const cx = left + slot * (i + 0.5);
    let acc = 0;
    const parts = series.map((se) => `${se.name} ${fmt(se.values[i] || 0)}`).join(", ");
    const g = s("g", { class: "stack", "data-label": cat });
    for (const se of series) {
      const v = se.values[i] || 0;
      if (v > 0) {
        g.appendChild(s("rect", { x: cx - bw / 2, y: y(acc + v), width: bw, height: y(acc) - y(acc + v),
          class: `col ${se.cls}` }, s("title", {}, `${cat}: ${parts}`)));
      }
      acc += v;
    }
    if (i % every === 0) g.appendChild(s("text", { x: cx, y: bottom + 16, class: "tick", "text-anchor": "middle" }, cat));
    svg.appendChild(g);
  });
  svg.appendChild(s("line", { x1: left, x2: right, y1: bottom, y2: bottom, class: "axis" }));
  // legend
  let lx = left;
  for (const se of series) {
    svg.appendChild(s("rect", { x: lx, y: 4, width: 12, height: 12, class: `col ${se.cls}`, rx: 2 }));
    svg.appendChild(s("text", { x: lx + 16, y: 14, class: "legend" }, se.name));
    lx += 24 + se.name.length * 7;
  }
  axisLabel(svg, xLabel, (left + right) / 2, height + 22 - 6);
  axisLabel(svg, yLabel, 14, (top + bottom) / 2, true);
  return svg;
}

// points: [{x, y}] sorted by x. threshold: {value, label}. yMin/yMax fix the range.
export function lineChart(points, { width = 560, height = 220, title = "", xLabel = "", yLabel = "",
  fmtY = (v) => String(v), fmtX = (v) => String(v), yMin = null, yMax = null, threshold = null,
  area = true, cls = "" } = {}) {
  const svg = frame(width, height, title);
  if (!points.length) return emptyNote(svg, width, height);
  const ys = points.map((p) => p.y).concat(threshold ? [threshold.value] : []);
  const nt = niceTicks(yMin ?? Math.min(0, ...ys), yMax ?? Math.max(...ys, 1));
  const lo = yMin ?? nt.min, hi = yMax ?? nt.max;
  const ticks = yMax !== null || yMin !== null ? niceTicks(lo, hi).ticks.filter((t) => t >= lo && t <= hi) : nt.ticks;
  const left = M.left, right = width - M.right, top = M.top, bottom = height - M.bottom;
  const x0 = points[0].x, x1 = points[points.length - 1].x;
  const x = (v) => (x1 === x0 ? (left + right) / 2 : left + ((v - x0) / (x1 - x0)) * (right - left));
  const y = (v) => bottom - ((v - lo) / (hi - lo || 1)) * (bottom - top);
  yAxis(svg, { ticks, y, left, right, fmt: fmtY });
  const d = points.map((p, i) => `${i ? "L" : "M"}${x(p.x).toFixed(1)},${y(p.y).toFixed(1)}`).join(" ");
  if (area) {
    svg.appendChild(s("path", { d: `${d} L${x(x1).toFixed(1)},${bottom} L${x(x0).toFixed(1)},${bottom} Z`,
      class: `area ${cls}` }));
  }
  svg.appendChild(s("path", { d, class: `line ${cls}`, "data-points": points.length }));
  if (points.length <= 80) {
    for (const p of points) {
      svg.appendChild(s("circle", { cx: x(p.x), cy: y(p.y), r: 2.5, class: `dot ${cls}` },
        s("title", {}, `${fmtX(p.x)}: ${fmtY(p.y)}`)));
    }
  }
  if (threshold) {
    const ty = y(threshold.value);
    svg.appendChild(s("line", { x1: left, x2: right, y1: ty, y2: ty, class: "threshold" }));
    svg.appendChild(s("text", { x: right - 4, y: ty - 5, class: "threshold-label", "text-anchor": "end" },
      threshold.label));
  }
  // x ticks: first, middle, last
  const xt = [...new Set([x0, points[Math.floor(points.length / 2)].x, x1])];
  for (const v of xt) {
    svg.appendChild(s("text", { x: x(v), y: bottom + 16, class: "tick", "text-anchor": "middle" }, fmtX(v)));
  }
  svg.appendChild(s("line", { x1: left, x2: right, y1: bottom, y2: bottom, class: "axis" }));
  axisLabel(svg, xLabel, (left + right) / 2, height - 6);
  axisLabel(svg, yLabel, 14, (top + bottom) / 2, true);
  return svg;
}

// A tiny line without axes, for dashboards.
export function sparkline(values, { width = 160, height = 36, max = null, cls = "" } = {}) {
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, class: `sparkline ${cls}`, preserveAspectRatio: "none" });
  if (values.length < 2) return svg;
  const hi = max ?? Math.max(...values, 1);
  const x = (i) => (i / (values.length - 1)) * width;
  const y = (v) => height - 2 - (Math.min(v, hi) / hi) * (height - 4);
  const d = values.map((v, i) => `${i ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
  svg.appendChild(s("path", { d: `${d} L${width},${height} L0,${height} Z`, class: "area" }));
  svg.appendChild(s("path", { d, class: "line" }));
  return svg;
}
