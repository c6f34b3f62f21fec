// Hand-written SVG time charts: stacked bars for counts, lines for
// averages. Small on purpose (docs/ui.md says why no library).
import { h, s, num } from "./dom.js";

const W = 640, H = 220, L = 52, R = 10, T = 12, B = 28;
const STEP = { hour: 3600e3, day: 86400e3 };

// buckets lists the start of every bucket in [since, until).
export function buckets(since, until, bucket) {
  const step = STEP[bucket];
  const start = new Date(since);
  if (bucket === "hour") start.setUTCMinutes(0, 0, 0); else start.setUTCHours(0, 0, 0, 0);
  const out = [];
  for (let t = start.getTime(); t < new Date(until).getTime() && out.length < 1000; t += step) out.push(t);
  return out;
}

function niceMax(v) {
  if (v <= 0) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function label(t, bucket) {
  const d = new Date(t);
  const md = (d.getUTCMonth() + 1) + "/" + d.getUTCDate();
  return bucket === "hour" ? md + " " + String(d.getUTCHours()).padStart(2, "0") + ":00" : md;
}

// timeChart draws series [{name, values: Map(bucketStart -> number)}] over
// the buckets ts. kind "bar" stacks them; "line" draws one line each.
export function timeChart({ title, ts, series, bucket, kind = "bar", unit = "", id }) {
  const n = Math.max(ts.length, 1);
  const slot = (W - L - R) / n;
  const totals = ts.map((t) => series.reduce((a, sr) => a + (sr.values.get(t) || 0), 0));
  const peak = kind === "bar" ? Math.max(0, ...totals) : Math.max(0, ...series.flatMap((sr) => ts.map((t) => sr.values.get(t) || 0)));
  const max = niceMax(peak);
  const y = (v) => T + (H - T - B) * (1 - v / max);
  const grid = [0, 0.5, 1].map((f) => [
    s("line", { class: "gridline", x1: L, x2: W - R, y1: y(max * f), y2: y(max * f) }),
    s("text", { x: L - 6, y: y(max * f) + 4, "text-anchor": "end" }, num(max * f) + unit),
  ]);
  const every = Math.max(1, Math.ceil(n / 6));
  const xlabels = ts.map((t, i) => (i % every === 0 ? s("text", { x: L + slot * i + slot / 2, y: H - 8, "text-anchor": "middle" }, label(t, bucket)) : null));
  const marks = [];
  if (kind === "bar") {
    ts.forEach((t, i) => {
      let acc = 0;
      series.forEach((sr, k) => {
        const v = sr.values.get(t) || 0;
        if (!v) return;
        const top = y(acc + v), bottom = y(acc);
        acc += v;
        marks.push(s("rect", { class: "bar s" + (k % 6), x: L + slot * i + slot * 0.15, width: Math.max(1, slot * 0.7), y: top, height: Math.max(1, bottom - top) },
          s("title", {}, label(t, bucket) + " · " + sr.name + ": " + num(v) + unit)));
      });
    });
  } else {
    series.forEach((sr, k) => {
      const pts = ts.map((t, i) => [t, i]).filter(([t]) => sr.values.has(t)).map(([t, i]) => [L + slot * i + slot / 2, y(sr.values.get(t))]);
      if (!pts.length) return;
      marks.push(s("polyline", { class: "line s" + (k % 6), points: pts.map((p) => p.join(",")).join(" ") }));
      pts.forEach(([px, py]) => marks.push(s("circle", { class: "s" + (k % 6), cx: px, cy: py, r: 2.5 })));
    });
  }
  const total = kind === "bar" ? totals.reduce((a, b) => a + b, 0) : null;
  const summary = title + (total !== null ? ": " + num(total) + unit + " in total" : "") + (series.length ? ", by " + series.map((x) => x.name).join(", ") : ", no data");
  return h("figure", { class: "chart", id: id || null, dataset: { total: total === null ? "" : String(total) } },
    h("h3", {}, title),
    s("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": summary },
      s("title", {}, summary), grid,
      s("line", { class: "axis", x1: L, x2: W - R, y1: y(0), y2: y(0) }), marks, xlabels),
    series.length > 1 || kind === "line" ? h("div", { class: "legend" }, series.map((sr, k) => h("span", {}, h("span", { class: "swatch s" + (k % 6) }), sr.name))) : null);
}
