// Platform API keys (SPEC §3): mine, and for admins the org's.
import { h, clear, fmtTime, ago } from "../dom.js";
import { api, listAll, enc } from "../api.js";
import { state, can, page, table, empty, badge, button, confirmDialog, formDialog, secretDialog, toast, load, PERMISSIONS } from "../ui.js";

const statusKind = { active: "ok", suspended: "warn", revoked: "bad" };

export function limitFields(v = {}) {
  return [
    { name: "rate_limit_rpm", label: "Requests per minute", type: "number", min: 0, value: v.rate_limit_rpm || "", hint: "Empty: no limit." },
    { name: "rate_limit_tpm", label: "Tokens per minute", type: "number", min: 0, value: v.rate_limit_tpm || "" },
    { name: "token_budget", label: "Token budget", type: "number", min: 0, value: v.token_budget || "" },
    { name: "budget_period", label: "Budget period", type: "select", value: v.budget_period || "", options: [["", "—"], ["day", "per UTC day"], ["month", "per UTC month"]] },
    { name: "allowed_models", label: "Allowed models", type: "textarea", rows: 2, value: (v.allowed_models || []).join("\n"), hint: "One per line: exact names or prefix* patterns. Empty: every model." },
  ];
}

// cleanLimits turns the form's limit values into the API's fields.
export function cleanLimits(v) {
  const models = (v.allowed_models || "").split(/[\s,]+/).filter(Boolean);
  delete v.allowed_models;
  if (models.length) v.allowed_models = models;
  if (!v.budget_period) delete v.budget_period;
  for (const k of ["rate_limit_rpm", "rate_limit_tpm", "token_budget"]) if (v[k] === 0) delete v[k];
  return v;
}

export function limitsText(k) {
  const parts = [];
  if (k.rate_limit_rpm) parts.push(k.rate_limit_rpm + " rpm");
  if (k.rate_limit_tpm) parts.push(k.rate_limit_tpm + " tpm");
  if (k.token_budget) parts.push(k.token_budget + " tokens/" + (k.budget_period || "?"));
  if (k.allowed_models && k.allowed_models.length) parts.push("models: " + k.allowed_models.join(", "));
  return parts.length ? parts.join(" · ") : "none";
}

function createKey(reload) {
  const mine = state.org.permissions || [];
  return formDialog("Create an API key", {
    submit: "Create key",
    intro: "The key works for the management API and the gateway with the permissions you tick (at most your role's).",
    fields: [
      { name: "name", label: "Name", required: true, placeholder: "laptop, ci, …" },
      { name: "description", label: "Description" },
      { name: "permissions", label: "Permissions", type: "checkboxes", options: PERMISSIONS.filter((p) => mine.includes(p)).map((p) => [p, p]), value: ["gateway:invoke", "providers:read"].filter((p) => mine.includes(p)) },
      { name: "expires_at", label: "Expires", type: "datetime-local", hint: "Empty: never." },
      ...limitFields(),
    ],
    onSubmit: async (v) => {
      const body = cleanLimits({ org: state.org.slug, ...v });
      const created = await api("POST", "/api/v1/api-keys", body);
      const plaintext = created.key;
      // Show it, drop it: only the dialog holds it from here.
      delete created.key;
      setTimeout(() => secretDialog("Your new API key: " + created.name, [["API key", plaintext]]).then(reload), 0);
    },
  });
}

function actions(k, reload, own) {
  const out = [];
  const post = (verb) => async () => { await api("POST", "/api/v1/api-keys/" + enc(k.id) + "/" + verb); toast(k.name + ": " + (verb === "suspend" ? "suspended" : "reactivated")); reload(); };
  if (k.status === "active") out.push(button("Suspend", post("suspend"), { aria: "Suspend " + k.name }));
  if (k.status === "suspended" && own) out.push(button("Reactivate", post("reactivate"), { aria: "Reactivate " + k.name }));
  if (k.status !== "revoked" && own) {
    out.push(button("Rotate", () => formDialog("Rotate " + k.name, {
      submit: "Rotate",
      intro: "A new key with the same settings is made; the old one keeps working for the grace period, then stops.",
      fields: [{ name: "grace_period_seconds", label: "Grace period (seconds)", type: "number", min: 0, max: 604800, value: 3600, hint: "0 stops the old key at once; at most 604800 (7 days)." }],
      onSubmit: async (v) => {
        const created = await api("POST", "/api/v1/api-keys/" + enc(k.id) + "/rotate", { grace_period_seconds: v.grace_period_seconds || 0 });
        const plaintext = created.key;
        delete created.key;
        setTimeout(() => secretDialog("The rotated key: " + created.name, [["API key", plaintext]]).then(reload), 0);
      },
    }), { aria: "Rotate " + k.name }));
  }
  if (k.status !== "revoked") {
    out.push(button("Revoke", async () => {
      if (!(await confirmDialog("Revoke " + k.name + "?", "Anything using this key stops working at once. A revoked key cannot be reactivated.", "Revoke"))) return;
      await api("POST", "/api/v1/api-keys/" + enc(k.id) + "/revoke");
      toast(k.name + " revoked");
      reload();
    }, { class: "danger", aria: "Revoke " + k.name }));
  }
  return h("div", { class: "row-actions" }, out);
}

function keyTable(items, reload, own, owners) {
  const cols = [
    { label: "Name", cell: (k) => h("div", {}, h("strong", {}, k.name), k.description ? h("div", { class: "muted" }, k.description) : null) },
    { label: "Prefix", cell: (k) => h("code", {}, k.prefix + "…") },
    owners ? { label: "Owner", cell: (k) => owners[k.user_id] || k.user_id } : null,
    { label: "Status", cell: (k) => badge(k.status, statusKind[k.status]) },
    { label: "Permissions", cell: (k) => h("span", { class: "perms" }, (k.permissions || []).join(" ")) },
    { label: "Limits", cell: (k) => limitsText(k) },
    { label: "Last used", cell: (k) => ago(k.last_used_at) },
    { label: "Expires", cell: (k) => (k.expires_at ? fmtTime(k.expires_at) : "never") },
    { label: "Actions", cell: (k) => actions(k, reload, own || k.user_id === state.me.user.id) },
  ].filter(Boolean);
  return table(cols, items);
}

export async function list(params = {}) {
  const mineBox = h("div", { id: "my-keys" });
  const orgBox = h("div", { id: "org-keys" });
  const reload = () => {
    load(mineBox, async () => {
      const items = (await listAll("/api/v1/api-keys")).filter((k) => k.org_id === state.org.id);
      if (!items.length) return empty("You have no API keys in " + state.org.name + " yet — create one to call the gateway or the API.", createBtn());
      return keyTable(items, reload, true);
    });
    if (can("api_keys:write")) {
      load(orgBox, async () => {
        const [items, ms] = await Promise.all([listAll("/api/v1/orgs/" + enc(state.org.slug) + "/api-keys"), listAll("/api/v1/orgs/" + enc(state.org.slug) + "/members")]);
        const owners = Object.fromEntries(ms.map((m) => [m.user_id, m.email]));
        const others = items.filter((k) => k.user_id !== state.me.user.id);
        if (!others.length) return empty("No other member has an API key yet.");
        return keyTable(others, reload, false, owners);
      });
    }
  };
  const createBtn = () => button("Create API key", () => createKey(reload), { class: "primary" });
  reload();
  if (params.create) setTimeout(() => { history.replaceState(null, "", "#/api-keys"); createKey(reload); }, 0);
  return page("API keys", {
    intro: "Keys for the gateway and the management API. The key itself is shown once, when it is made; Keybridge keeps only its hash.",
    actions: createBtn(),
  },
  h("h2", {}, "My keys"), mineBox,
  can("api_keys:write") ? [h("h2", {}, "Everyone's keys in " + state.org.name), h("p", { class: "muted" }, "As an admin you may suspend or revoke any member's key."), orgBox] : null);
}

export { clear };
