// Providers and their upstream keys (SPEC §4).
import { h, clear, fmtTime, ago, num } from "../dom.js";
import { api, listAll, enc } from "../api.js";
import { state, can, orgPath, page, table, empty, badge, button, confirmDialog, dialog, form, formDialog, toast, load, errorBox, loading } from "../ui.js";
import { go } from "../app.js";

export const TYPES = [
  ["openai", "OpenAI"], ["anthropic", "Anthropic"], ["bedrock", "AWS Bedrock"], ["google", "Google Gemini"],
  ["azure-openai", "Azure OpenAI"], ["openai-compatible", "OpenAI-compatible"],
];
const DEFAULT_URL = {
  openai: "https://api.openai.com/v1", anthropic: "https://api.anthropic.com",
  google: "https://generativelanguage.googleapis.com", bedrock: "https://bedrock-runtime.{region}.amazonaws.com",
};
const SOURCES = [["org", "the org's upstream keys"], ["user", "each user's personal key"], ["user_or_org", "a personal key if the user has one, else the org's"]];
const typeName = (t) => (TYPES.find(([v]) => v === t) || [t, t])[1];

// settingsFields are the type-specific settings; secrets are masked,
// never prefilled, and left empty keep what is stored.
function settingsFields(type, cur = {}, editing = false) {
  const keep = editing ? "Empty keeps the stored value." : "";
  if (type === "bedrock") {
    return [
      { name: "s.region", label: "Region", required: true, value: cur.region || "", placeholder: "us-east-1" },
      { name: "s.model", label: "Default model", value: cur.model || "" },
      { name: "s.small_fast_model", label: "Small, fast model", value: cur.small_fast_model || "" },
      { name: "s.access_key", label: "AWS access key id", type: "password", hint: (cur.access_key_set ? "Set. " : "") + keep },
      { name: "s.access_key_secret", label: "AWS secret access key", type: "password", hint: (cur.access_key_secret_set ? "Set. " : "") + keep },
    ];
  }
  if (type === "azure-openai") return [{ name: "s.api_version", label: "API version", value: cur.api_version || "", placeholder: "2024-10-21" }];
  return [];
}

// splitSettings moves the "s.*" form values into a settings object.
function splitSettings(v) {
  const settings = {};
  for (const k of Object.keys(v)) {
    if (k.startsWith("s.")) { settings[k.slice(2)] = v[k]; delete v[k]; }
  }
  if (Object.keys(settings).length) v.settings = settings;
  return v;
}

function testResult(r) {
  const limits = Object.entries(r.rate_limits || {}).filter(([, l]) => l);
  return h("div", { class: "panel test-result", role: "status" },
    h("p", {}, r.reachable ? badge("reachable", "ok") : badge("unreachable", "bad"),
      r.status_code ? " HTTP " + r.status_code : "", " · ", num(r.latency_ms) + " ms"),
    r.error ? h("p", { class: "error" }, r.error) : null,
    r.models && r.models.length ? h("p", {}, h("strong", {}, r.models.length + " models: "), r.models.slice(0, 12).join(", "), r.models.length > 12 ? ", …" : "") : null,
    limits.length ? table([
      { label: "Limit", cell: ([k]) => k.replace("_", " ") },
      { label: "Remaining", cell: ([, l]) => num(l.remaining) + " of " + num(l.limit), class: "num" },
      { label: "Resets", cell: ([, l]) => (l.reset_at ? fmtTime(l.reset_at) : "—") },
    ], limits) : h("p", { class: "muted" }, "The provider sent no rate-limit headers."));
}

function createProvider(reload) {
  let type = "openai";
  const holder = h("div");
  const result = h("div", { class: "test-box", "aria-live": "polite" });
  const typeSel = h("select", { id: "provider-type" }, TYPES.map(([v, l]) => h("option", { value: v }, l)));
  let f;
  const build = () => {
    const name = f ? f.controls.name.value : "";
    f = form({
      submit: "Create provider",
      fields: [
        { name: "name", label: "Name", required: true, value: name, hint: "Lower-case, in gateway URLs: /gateway/NAME/…" },
        { name: "display_name", label: "Display name" },
        { name: "base_url", label: "Base URL", required: type === "azure-openai" || type === "openai-compatible", placeholder: DEFAULT_URL[type] || "https://…", hint: DEFAULT_URL[type] ? "Empty: " + DEFAULT_URL[type] : "Required for this type." },
        { name: "key_source", label: "Credentials", type: "select", options: SOURCES, value: "org" },
        ...settingsFields(type),
        type === "bedrock" ? null : { name: "api_key", label: "Upstream API key", type: "password", hint: "Optional now; stored encrypted, never shown again (only a hint)." },
        type === "bedrock" ? null : { name: "key_name", label: "Key name", placeholder: "main" },
      ],
      extra: button("Test connection", async () => {
        const v = splitSettings(f.values());
        clear(result, loading("Testing"));
        try {
          const r = await api("POST", orgPath("/providers/test"), { type, base_url: v.base_url, api_key: v.api_key, settings: v.settings });
          clear(result, testResult(r));
        } catch (e) { clear(result, errorBox(e)); }
      }),
      onSubmit: async (v) => {
        v = splitSettings(v);
        const apiKey = v.api_key, keyName = v.key_name;
        delete v.api_key; delete v.key_name;
        const p = await api("POST", orgPath("/providers"), { ...v, type });
        if (apiKey) {
          try {
            await api("POST", orgPath("/providers/" + enc(p.name) + "/keys"), { api_key: apiKey, name: keyName || "main" });
          } catch (e) {
            toast("Provider created, but its key was refused: " + e.message, "bad");
          }
        }
        dl.close();
        toast("Provider " + p.name + " created");
        go("#/providers/" + enc(p.name));
      },
    });
    clear(holder, f.el);
    clear(result);
  };
  typeSel.addEventListener("change", () => { type = typeSel.value; build(); });
  build();
  const dl = dialog("Add a provider",
    h("div", { class: "field" }, h("label", { for: "provider-type" }, "Type"), typeSel), holder, result);
  typeSel.focus();
  return dl.closed.then(reload);
}

export async function list() {
  const box = h("div", { id: "providers" });
  const reload = () => load(box, async () => {
    const items = await listAll(orgPath("/providers"));
    if (!items.length) {
      return empty(can("providers:write") ? "No providers yet — add one, with its upstream key, and the gateway can call it." : "No providers yet. An admin of " + state.org.name + " adds them.",
        can("providers:write") ? addBtn() : null);
    }
    return table([
      { label: "Name", cell: (p) => h("a", { href: "#/providers/" + enc(p.name) }, p.name) },
      { label: "Display name", cell: (p) => p.display_name },
      { label: "Type", cell: (p) => typeName(p.type) },
      { label: "Base URL", cell: (p) => h("code", {}, p.base_url) },
      { label: "Status", cell: (p) => (p.enabled ? badge("enabled", "ok") : badge("disabled", "warn")) },
      { label: "Credentials", cell: (p) => p.key_source },
      { label: "Upstream keys", cell: (p) => String(p.key_count), class: "num" },
    ], items, "Providers");
  });
  const addBtn = () => button("Add provider", () => createProvider(reload), { class: "primary" });
  reload();
  return page("Providers", {
    intro: "The AI providers your org calls through the gateway, with their real keys stored encrypted.",
    actions: can("providers:write") ? addBtn() : null,
  }, box);
}

function cooldown(k) {
  if (!k.cooldown_until || new Date(k.cooldown_until) <= new Date()) return badge("ready", "ok");
  const el = badge("", "warn");
  const tick = () => {
    const left = Math.ceil((new Date(k.cooldown_until) - Date.now()) / 1000);
    if (!el.isConnected && el.dataset.started) return;
    el.dataset.started = "1";
    if (left <= 0) { el.textContent = "ready"; el.className = "badge badge-ok"; return; }
    el.textContent = "cooling down · " + left + " s";
    setTimeout(tick, 1000);
  };
  tick();
  return el;
}

function keysSection(p, reloadAll) {
  const box = h("div", { id: "provider-keys" });
  const usageBox = h("div", { id: "provider-usage", "aria-live": "polite" });
  const path = orgPath("/providers/" + enc(p.name) + "/keys");
  const reload = () => load(box, async () => {
    const items = await listAll(path);
    if (!items.length) return empty(p.type === "bedrock" ? "Bedrock authenticates with the access key in its settings." : "No upstream keys yet — add one below.");
    return table([
      { label: "Name", cell: (k) => k.name },
      { label: "Hint", cell: (k) => h("code", {}, k.hint) },
      { label: "Priority", cell: (k) => String(k.priority), class: "num" },
      { label: "Status", cell: (k) => (k.enabled ? badge("enabled", "ok") : badge("disabled", "warn")) },
      { label: "Cooldown", cell: cooldown },
      { label: "Last used", cell: (k) => ago(k.last_used_at) },
      { label: "Actions", cell: (k) => h("div", { class: "row-actions" },
        button(k.enabled ? "Disable" : "Enable", async () => { await api("PATCH", path + "/" + enc(k.id), { enabled: !k.enabled }); reload(); }, { aria: (k.enabled ? "Disable " : "Enable ") + k.name }),
        button("Priority", () => formDialog("Priority of " + k.name, {
          fields: [{ name: "priority", label: "Priority", type: "number", value: k.priority, hint: "Lower goes first; equal priorities go in creation order." }],
          onSubmit: async (v) => { await api("PATCH", path + "/" + enc(k.id), { priority: v.priority ?? 0 }); reload(); },
        }), { aria: "Priority of " + k.name }),
        button("Delete", async () => {
          if (!(await confirmDialog("Delete key " + k.name + "?", "The gateway stops using it at once. This cannot be undone."))) return;
          await api("DELETE", path + "/" + enc(k.id));
          reloadAll();
        }, { class: "danger", aria: "Delete key " + k.name })) },
    ], items, "Upstream keys");
  });
  const showUsage = (refresh) => load(usageBox, async () => {
    const [out, keys] = await Promise.all([api("GET", orgPath("/providers/" + enc(p.name) + "/usage" + (refresh ? "?refresh=true" : ""))), listAll(path)]);
    const byId = Object.fromEntries(keys.map((k) => [k.id, k]));
    const items = out.items || [];
    if (!items.length) return empty("No keys to test.");
    return h("div", { class: "grid" }, items.map((r) => {
      const k = byId[r.key_id];
      return h("div", { class: "key-usage" }, h("h3", {}, "Key " + (k ? k.name + " (" + k.hint + ")" : r.key_id), r.cached ? h("span", { class: "muted" }, " · cached") : null), testResult(r));
    }));
  });
  reload();
  const add = form({
    label: "Add an upstream key", submit: "Add key",
    fields: [
      { name: "api_key", label: "API key", type: "password", required: true, hint: "Stored encrypted; only a hint is ever shown." },
      { name: "name", label: "Name", placeholder: "backup" },
      { name: "priority", label: "Priority", type: "number" },
    ],
    onSubmit: async (v, { el }) => {
      await api("POST", path, v);
      el.reset();
      toast("Key added");
      reloadAll();
    },
  });
  add.el.id = "add-key-form";
  return [
    h("h2", {}, "Upstream keys"),
    h("p", { class: "muted" }, "Tried in priority order; a key that fails with 401, 403, 429 or 5xx cools down and the next one is used."),
    box,
    p.type === "bedrock" ? null : [h("h3", {}, "Add a key"), add.el],
    h("h2", {}, "Connection and rate limits"),
    h("p", { class: "muted" }, "Calls the provider's model list with each stored key (no token cost), and shows reachability, latency, models and the rate limits it reports."),
    h("div", { class: "actions" }, button("Test connection", () => showUsage(true), { class: "primary" })),
    usageBox,
  ];
}

function editProvider(p, reload) {
  return formDialog("Edit " + p.name, {
    fields: [
      { name: "display_name", label: "Display name", value: p.display_name },
      { name: "base_url", label: "Base URL", value: p.base_url },
      { name: "key_source", label: "Credentials", type: "select", options: SOURCES, value: p.key_source },
      { name: "enabled", label: "Enabled", type: "checkbox", value: p.enabled },
      ...settingsFields(p.type, p.settings || {}, true),
    ],
    onSubmit: async (v) => {
      v = splitSettings(v);
      await api("PATCH", orgPath("/providers/" + enc(p.name)), v);
      toast("Saved");
      reload();
    },
  });
}

export async function detail({ name }) {
  const p = await api("GET", orgPath("/providers/" + enc(name)));
  const reload = () => go("#/providers/" + enc(p.name));
  const settings = Object.entries(p.settings || {}).map(([k, v]) => [k.replace(/_set$/, ""), k.endsWith("_set") ? (v ? "set (write-only)" : "not set") : String(v)]);
  return page(p.display_name || p.name, {
    intro: typeName(p.type) + " provider · /gateway/" + p.name,
    actions: can("providers:write") ? [
      button("Edit", () => editProvider(p, reload)),
      button("Delete provider", async () => {
        if (!(await confirmDialog("Delete provider " + p.name + "?", "Its upstream keys are deleted with it, and every client using /gateway/" + p.name + " stops working."))) return;
        await api("DELETE", orgPath("/providers/" + enc(p.name)));
        toast("Provider " + p.name + " deleted");
        go("#/providers");
      }, { class: "danger" }),
    ] : null,
  },
  h("p", {}, h("a", { href: "#/providers" }, "← All providers")),
  h("dl", { class: "facts" },
    h("dt", {}, "Name"), h("dd", {}, p.name),
    h("dt", {}, "Type"), h("dd", {}, typeName(p.type)),
    h("dt", {}, "Base URL"), h("dd", {}, h("code", {}, p.base_url)),
    h("dt", {}, "Status"), h("dd", {}, p.enabled ? "enabled" : "disabled"),
    h("dt", {}, "Credentials"), h("dd", {}, (SOURCES.find(([v]) => v === p.key_source) || [0, p.key_source])[1]),
    h("dt", {}, "Upstream keys"), h("dd", {}, String(p.key_count)),
    settings.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
  can("providers:write") ? keysSection(p, reload) : h("p", { class: "muted" }, "Admins manage this provider's keys."));
}
