// The dashboard and the usage page (SPEC §7.7): the usage API's groups and
// their hourly or daily series.
import { h, clear, num } from "../dom.js";
import { api, listAll, enc } from "../api.js";
import { state, can, orgPath, page, table, empty, load, form } from "../ui.js";
import { timeChart, buckets } from "../chart.js";

const PERIODS = [["24h", "24 hours", 24 * 3600e3, "hour"], ["7d", "7 days", 7 * 86400e3, "day"], ["30d", "30 days", 30 * 86400e3, "day"]];
const DIMENSIONS = [["provider", "Provider"], ["model", "Model"], ["user", "User"], ["project", "Project"], ["api_key", "Key"]];
const DAY = 86400e3;
// MAX_DAYS bounds a custom range (its chart has a bar per day); how far back
// usage is kept is the API's to say.
const MAX_DAYS = 400;

// The period is in the page's address (#/usage?period=7d, or
// #/usage?since=2026-11-01&until=2026-11-30 for a custom range of UTC days,
// both included), so a bookmark or a reload shows the same one.
function rangeOf() {
  const q = new URLSearchParams((location.hash.split("?")[1]) || "");
  const since = q.get("since") || "", until = q.get("until") || "";
  if (since || until) return { custom: true, since, until };
  const p = q.get("period");
  return { custom: false, period: PERIODS.some(([v]) => v === p) ? p : "24h" };
}

// day parses a date input's YYYY-MM-DD as the UTC midnight starting it.
function day(v) {
  const m = /^(\d{4,6})-(\d{2})-(\d{2})$/.exec(v || "");
  if (!m) return null;
  const t = Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3]));
  const d = new Date(t);
  return d.getUTCFullYear() === Number(m[1]) && d.getUTCMonth() === Number(m[2]) - 1 && d.getUTCDate() === Number(m[3]) ? t : null;
}

// checkRange answers the field errors of a custom range, {} when it is
// well formed; what only the server knows (how far back usage is kept) the
// API answers.
function checkRange(since, until) {
  const fields = {};
  const s = day(since), u = day(until);
  if (!since) fields.since = "is required"; else if (s === null) fields.since = "must be a date";
  if (!until) fields.until = "is required"; else if (u === null) fields.until = "must be a date";
  if (s !== null && u !== null) {
    if (u < s) fields.until = "must not be before since";
    else if ((u - s) / DAY + 1 > MAX_DAYS) fields.until = "must be at most " + MAX_DAYS + " days after since";
  }
  return fields;
}

function window_(r) {
  if (r.custom) {
    const s = day(r.since), u = day(r.until) + DAY;
    const bucket = u - s <= 2 * DAY ? "hour" : "day";
    return { since: new Date(s).toISOString(), until: new Date(u).toISOString(), bucket };
  }
  const [, , span, bucket] = PERIODS.find(([v]) => v === r.period);
  const until = new Date();
  const since = new Date(until.getTime() - span);
  return { since: since.toISOString(), until: until.toISOString(), bucket };
}

const describe = (r) => (r.custom ? r.since + " to " + r.until : "the last " + PERIODS.find(([v]) => v === r.period)[1]);

const tokens = (x) => (x.input_tokens || 0) + (x.output_tokens || 0) + (x.cache_read_tokens || 0) + (x.cache_write_tokens || 0);

// namer resolves the ids the usage API groups by to names people know.
async function namer(dim) {
  const m = {};
  try {
    if (dim === "provider") for (const p of await listAll(orgPath("/providers"))) m[p.id] = p.name;
    if (dim === "user" && can("members:read")) for (const u of await listAll(orgPath("/members"))) m[u.user_id] = u.email;
    if (dim === "project" || dim === "api_key") {
      const projects = await listAll(orgPath("/projects"));
      for (const p of projects) m[p.id] = p.name;
      if (dim === "api_key") {
        if (can("api_keys:write")) for (const k of await listAll(orgPath("/api-keys"))) m[k.id] = k.name + " (" + k.prefix + "…)";
        else for (const k of await listAll("/api/v1/api-keys")) m[k.id] = k.name + " (" + k.prefix + "…)";
        await Promise.all(projects.slice(0, 20).map(async (p) => {
          for (const k of await listAll(orgPath("/projects/" + enc(p.id) + "/ai-keys?include_deleted=true"))) m[k.id] = p.name + " / " + k.name;
        }));
      }
    }
  } catch (e) { /* names are a nicety: ids still show */ }
  return (key) => (key === "" ? "(none)" : m[key] || key);
}

function query(dim, w, withSeries) {
  const q = new URLSearchParams({ group_by: dim, since: w.since, until: w.until });
  if (withSeries) q.set("bucket", w.bucket);
  return api("GET", orgPath("/usage?" + q));
}

// rangeControls are the period buttons and the custom range's form. A
// choice changes the address, which renders the page again.
function rangeControls(base, r) {
  const bar = h("div", { class: "tabs", role: "group", "aria-label": "Period" });
  const today = new Date().toISOString().slice(0, 10);
  const f = form({
    label: "Custom range", submit: "Show range", class: "range-form",
    fields: [
      { name: "since", label: "Since (UTC)", type: "date", value: r.custom ? r.since : new Date(Date.now() - 6 * DAY).toISOString().slice(0, 10), required: true },
      { name: "until", label: "Until (UTC)", type: "date", value: r.custom ? r.until : today, required: true },
    ],
    onSubmit: async (v) => {
      const fields = checkRange(v.since, v.until);
      if (Object.keys(fields).length) throw { message: "Choose a range of days, since first.", fields };
      location.hash = base + "?" + new URLSearchParams({ since: v.since, until: v.until });
    },
  });
  f.el.id = "range-form";
  if (!r.custom) f.el.classList.add("hidden");
  const custom = h("button", { type: "button", "aria-pressed": String(r.custom), "aria-expanded": String(r.custom), "aria-controls": "range-form" }, "Custom range");
  custom.addEventListener("click", () => {
    const open = f.el.classList.toggle("hidden") === false;
    custom.setAttribute("aria-expanded", String(open));
    if (open) f.controls.since.focus();
  });
  clear(bar, PERIODS.map(([v, l]) => {
    const b = h("button", { type: "button", "aria-pressed": String(!r.custom && v === r.period) }, "Last " + l);
    b.addEventListener("click", () => { location.hash = v === "24h" ? base : base + "?period=" + v; });
    return b;
  }), custom);
  return { bar, form: f };
}

// fetchRange runs the queries of a range. A custom range the page or the
// API refuses is shown in the range's form, with each field beside its
// control, and nothing below it.
async function fetchRange(ctl, r, fn) {
  if (r.custom) {
    const fields = checkRange(r.since, r.until);
    if (Object.keys(fields).length) {
      ctl.form.showError({ message: "This address holds no usable range of days.", fields });
      return null;
    }
  }
  try {
    return await fn(window_(r));
  } catch (e) {
    if (!r.custom || !e.fields || !(e.fields.since || e.fields.until)) throw e;
    ctl.form.showError(e);
    return null;
  }
}

// seriesOf turns groups into chart series of metric, the top 5 groups by
// requests and the rest as "other".
function seriesOf(groups, name, metric) {
  const sorted = [...groups].sort((a, b) => b.requests - a.requests);
  const top = sorted.slice(0, 5), rest = sorted.slice(5);
  const one = (label, gs) => {
    const values = new Map();
    for (const g of gs) for (const p of g.series || []) {
      const t = new Date(p.start).getTime();
      values.set(t, (values.get(t) || 0) + metric(p));
    }
    return { name: label, values };
  };
  const out = top.map((g) => one(name(g.key), [g]));
  if (rest.length) out.push(one("other", rest));
  return out;
}

function latencySeries(groups) {
  const sum = new Map(), count = new Map();
  for (const g of groups) for (const p of g.series || []) {
    const t = new Date(p.start).getTime();
    sum.set(t, (sum.get(t) || 0) + (p.latency_ms_avg || 0) * p.requests);
    count.set(t, (count.get(t) || 0) + p.requests);
  }
  const values = new Map();
  for (const [t, c] of count) if (c) values.set(t, Math.round(sum.get(t) / c));
  return [{ name: "average latency", values }];
}

function topTable(title, groups, name, id) {
  const rows = [...groups].sort((a, b) => b.requests - a.requests).slice(0, 5);
  return h("div", { class: "panel top", id }, h("h3", {}, title),
    rows.length ? table([
      { label: "Name", cell: (g) => name(g.key) },
      { label: "Requests", cell: (g) => num(g.requests), class: "num" },
      { label: "Tokens", cell: (g) => num(tokens(g)), class: "num" },
    ], rows, title) : h("p", { class: "muted" }, "Nothing yet."));
}

export async function dashboard() {
  const body = h("div", { id: "dashboard" });
  const r = rangeOf();
  const ctl = rangeControls("#/dashboard", r);
  const reload = () => load(body, () => fetchRange(ctl, r, async (w) => {
    const [byProvider, byModel, byKey, byProject, nProvider, nModel, nKey, nProject] = await Promise.all([
      query("provider", w, true), query("model", w, false), query("api_key", w, false), query("project", w, false),
      namer("provider"), namer("model"), namer("api_key"), namer("project"),
    ]);
    const groups = byProvider.items || [];
    const ts = buckets(w.since, w.until, w.bucket);
    const sum = (f) => groups.reduce((a, g) => a + f(g), 0);
    const requests = sum((g) => g.requests), errors = sum((g) => g.errors);
    const latency = requests ? sum((g) => g.latency_ms_avg * g.requests) / requests : 0;
    const stat = (id, v, l) => h("div", { class: "stat", id }, h("div", { class: "v" }, v), h("div", { class: "l" }, l));
    return [
      h("div", { class: "stats" },
        stat("stat-requests", num(requests), "requests"),
        stat("stat-tokens", num(sum(tokens)), "tokens"),
        stat("stat-errors", num(errors), "errors" + (requests ? " (" + num((100 * errors) / requests) + " %)" : "")),
        stat("stat-latency", requests ? num(Math.round(latency)) + " ms" : "—", "average latency")),
      requests ? null : empty("No gateway traffic in " + describe(r) + " yet. Connect a client (see Connect a client) and its requests show here."),
      h("div", { class: "grid charts" },
        timeChart({ id: "chart-requests", title: "Requests", ts, bucket: w.bucket, series: seriesOf(groups, nProvider, (p) => p.requests) }),
        timeChart({ id: "chart-tokens", title: "Tokens", ts, bucket: w.bucket, series: seriesOf(groups, nProvider, tokens) }),
        timeChart({ id: "chart-errors", title: "Errors", ts, bucket: w.bucket, series: seriesOf(groups, nProvider, (p) => p.errors) }),
        timeChart({ id: "chart-latency", title: "Latency", ts, bucket: w.bucket, kind: "line", unit: " ms", series: latencySeries(groups) })),
      h("div", { class: "grid tops" },
        topTable("Top providers", groups, nProvider, "top-providers"),
        topTable("Top models", byModel.items || [], nModel, "top-models"),
        topTable("Top keys", byKey.items || [], nKey, "top-keys"),
        topTable("Top projects", (byProject.items || []).filter((g) => g.key), nProject, "top-projects")),
    ];
  }));
  reload();
  const by = r.custom && Object.keys(checkRange(r.since, r.until)).length ? "" : window_(r).bucket;
  return page("Dashboard", { intro: "Gateway traffic of " + state.org.name + " in " + describe(r) + (by ? ", by " + by : "") + " (UTC).", actions: ctl.bar }, ctl.form.el, body);
}

function csv(dim, groups, name) {
  const cols = ["requests", "errors", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "failovers", "latency_ms_avg"];
  const cell = (v) => { const t = String(v ?? ""); return /[",\n]/.test(t) ? '"' + t.replace(/"/g, '""') + '"' : t; };
  const lines = [[dim, "name", ...cols].join(",")];
  for (const g of groups) lines.push([g.key, name(g.key), ...cols.map((c) => g[c])].map(cell).join(","));
  return lines.join("\n") + "\n";
}

let dimension = "provider";
let metric = "requests";
const METRICS = [["requests", "Requests", (p) => p.requests], ["tokens", "Tokens", tokens], ["errors", "Errors", (p) => p.errors]];

export async function usage() {
  const body = h("div", { id: "usage" });
  const dimSel = h("select", { id: "usage-dim" }, DIMENSIONS.map(([v, l]) => h("option", { value: v, selected: v === dimension }, l)));
  const metSel = h("select", { id: "usage-metric" }, METRICS.map(([v, l]) => h("option", { value: v, selected: v === metric }, l)));
  let url = "";
  const r = rangeOf();
  const ctl = rangeControls("#/usage", r);
  const tag = r.custom ? r.since + "-" + r.until : r.period;
  const reload = () => load(body, () => fetchRange(ctl, r, async (w) => {
    const [out, name] = await Promise.all([query(dimension, w, true), namer(dimension)]);
    const groups = (out.items || []).sort((a, b) => b.requests - a.requests);
    if (url) URL.revokeObjectURL(url);
    const blob = new Blob([csv(dimension, groups, name)], { type: "text/csv" });
    url = URL.createObjectURL(blob);
    const dl = h("a", { class: "button", id: "usage-csv", href: url, download: "keybridge-usage-" + state.org.slug + "-" + dimension + "-" + tag + ".csv" }, "Download CSV");
    dl.csvBlob = blob;
    if (!groups.length) return [empty("No usage in " + describe(r) + "."), dl];
    const m = METRICS.find(([v]) => v === metric);
    return [
      timeChart({ id: "usage-chart", title: m[1] + " by " + DIMENSIONS.find(([v]) => v === dimension)[1].toLowerCase(), ts: buckets(w.since, w.until, w.bucket), bucket: w.bucket, series: seriesOf(groups, name, m[2]) }),
      h("div", { class: "actions table-actions" }, dl),
      table([
        { label: DIMENSIONS.find(([v]) => v === dimension)[1], cell: (g) => name(g.key) },
        { label: "Requests", cell: (g) => num(g.requests), class: "num" },
        { label: "Errors", cell: (g) => num(g.errors), class: "num" },
        { label: "Input", cell: (g) => num(g.input_tokens), class: "num" },
        { label: "Output", cell: (g) => num(g.output_tokens), class: "num" },
        { label: "Cache read", cell: (g) => num(g.cache_read_tokens), class: "num" },
        { label: "Cache write", cell: (g) => num(g.cache_write_tokens), class: "num" },
        { label: "Failovers", cell: (g) => num(g.failovers), class: "num" },
        { label: "Avg latency", cell: (g) => num(Math.round(g.latency_ms_avg)) + " ms", class: "num" },
      ], groups, "Usage"),
    ];
  }));
  dimSel.addEventListener("change", () => { dimension = dimSel.value; reload(); });
  metSel.addEventListener("change", () => { metric = metSel.value; reload(); });
  reload();
  return page("Usage", { intro: "Gateway usage of " + state.org.name + ", grouped as you choose. Times are UTC." },
    h("div", { class: "filters" },
      h("div", { class: "field" }, h("label", { for: "usage-dim" }, "Group by"), dimSel),
      h("div", { class: "field" }, h("label", { for: "usage-metric" }, "Chart"), metSel),
      ctl.bar),
    ctl.form.el,
    body);
}
