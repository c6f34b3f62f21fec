// Projects and their AI keys (SPEC §5).
import { h, fmtTime, ago } from "../dom.js";
import { api, listAll, enc } from "../api.js";
import { state, can, orgPath, page, table, empty, badge, button, confirmDialog, formDialog, secretDialog, toast, load } from "../ui.js";
import { limitFields, cleanLimits, limitsText } from "./apikeys.js";
import { go } from "../app.js";

const AI_TYPES = [["OPENAI", "OpenAI (openai, azure-openai)"], ["ANTHROPIC", "Anthropic"], ["GOOGLE", "Google Gemini"], ["AWS", "AWS Bedrock (SigV4)"], ["OTHER", "OpenAI-compatible"]];

export async function list() {
  const box = h("div", { id: "projects" });
  const create = () => formDialog("Create a project", {
    submit: "Create project",
    fields: [
      { name: "name", label: "Name", required: true, placeholder: "web-app, ci, data-team" },
      { name: "description", label: "Description", type: "textarea" },
    ],
    onSubmit: async (v) => {
      const p = await api("POST", orgPath("/projects"), v);
      toast("Project " + p.name + " created");
      go("#/projects/" + enc(p.id));
    },
  });
  const btn = () => (can("projects:write") ? button("Create project", create, { class: "primary" }) : null);
  load(box, async () => {
    const items = await listAll(orgPath("/projects"));
    if (!items.length) return empty("No projects yet. A project is a repository, a service or a team's automation; it holds AI keys that act for it, not for a person.", btn());
    return table([
      { label: "Name", cell: (p) => h("a", { href: "#/projects/" + enc(p.id) }, p.name) },
      { label: "Description", cell: (p) => p.description || "—" },
      { label: "Created", cell: (p) => fmtTime(p.created_at) },
    ], items, "Projects");
  });
  return page("Projects", { intro: "Projects own AI keys: a key and a secret for a repository or service, limited to one kind of provider.", actions: btn() }, box);
}

function createAIKey(p, reload) {
  return formDialog("Create an AI key for " + p.name, {
    submit: "Create AI key",
    intro: "The key reaches only providers of its type. AWS keys work as SigV4 credentials (access key id = key, secret access key = secret).",
    fields: [
      { name: "name", label: "Name", required: true, placeholder: "github-actions" },
      { name: "ai_type", label: "Type", type: "select", options: AI_TYPES, value: "OPENAI" },
      ...limitFields(),
    ],
    onSubmit: async (v) => {
      const created = await api("POST", orgPath("/projects/" + enc(p.id) + "/ai-keys"), cleanLimits(v));
      const pair = [["Key (public identifier)", created.key], ["Secret", created.secret]];
      delete created.secret;
      setTimeout(() => secretDialog("AI key " + v.name, pair, "Copy the secret now: you will not see this again. The key identifier stays visible in the list.").then(reload), 0);
    },
  });
}

function editAIKey(p, k, reload) {
  return formDialog("Limits of " + k.name, {
    fields: [{ name: "name", label: "Name", value: k.name }, ...limitFields(k)],
    onSubmit: async (v) => {
      const body = cleanLimits(v);
      // PATCH: an emptied limit is sent as 0 (none) and an emptied list as [].
      for (const f of ["rate_limit_rpm", "rate_limit_tpm", "token_budget"]) if (!(f in body)) body[f] = 0;
      if (!body.allowed_models) body.allowed_models = [];
      if (!body.token_budget) delete body.budget_period;
      await api("PATCH", orgPath("/projects/" + enc(p.id) + "/ai-keys/" + enc(k.id)), body);
      toast("Saved");
      reload();
    },
  });
}

export async function detail({ id }) {
  const p = await api("GET", orgPath("/projects/" + enc(id)));
  const box = h("div", { id: "ai-keys" });
  const showDeleted = h("input", { type: "checkbox", id: "show-deleted" });
  const members = can("members:read") ? await listAll(orgPath("/members")).catch(() => []) : [];
  const who = Object.fromEntries(members.map((m) => [m.user_id, m.email]));
  const reload = () => load(box, async () => {
    const items = await listAll(orgPath("/projects/" + enc(p.id) + "/ai-keys" + (showDeleted.checked ? "?include_deleted=true" : "")));
    if (!items.length) return empty("No AI keys yet." + (can("projects:write") ? " Create one for a repository's CI or a service." : ""));
    return table([
      { label: "Name", cell: (k) => h("strong", {}, k.name) },
      { label: "Type", cell: (k) => k.ai_type },
      { label: "Key", cell: (k) => h("code", { class: "wrap" }, k.key) },
      { label: "Limits", cell: limitsText },
      { label: "Created by", cell: (k) => who[k.created_by] || k.created_by || "—" },
      { label: "Last used", cell: (k) => ago(k.last_used_at) },
      { label: "Status", cell: (k) => (k.deleted_at ? badge("deleted " + fmtTime(k.deleted_at), "bad") : badge("active", "ok")) },
      can("projects:write") ? { label: "Actions", cell: (k) => (k.deleted_at ? "—" : h("div", { class: "row-actions" },
        button("Limits", () => editAIKey(p, k, reload), { aria: "Limits of " + k.name }),
        button("Delete", async () => {
          if (!(await confirmDialog("Delete AI key " + k.name + "?", "Its secret stops working at once. The row stays, for the audit trail (see Show deleted)."))) return;
          await api("DELETE", orgPath("/projects/" + enc(p.id) + "/ai-keys/" + enc(k.id)));
          toast(k.name + " deleted");
          reload();
        }, { class: "danger", aria: "Delete AI key " + k.name }))) } : null,
    ].filter(Boolean), items, "AI keys");
  });
  showDeleted.addEventListener("change", reload);
  reload();
  return page(p.name, {
    intro: p.description || "Project",
    actions: can("projects:write") ? [
      button("Create AI key", () => createAIKey(p, reload), { class: "primary" }),
      button("Edit", () => formDialog("Edit " + p.name, {
        fields: [{ name: "name", label: "Name", value: p.name }, { name: "description", label: "Description", type: "textarea", value: p.description, keepEmpty: true }],
        onSubmit: async (v) => { await api("PATCH", orgPath("/projects/" + enc(p.id)), v); go("#/projects/" + enc(p.id)); },
      })),
      button("Delete project", async () => {
        if (!(await confirmDialog("Delete project " + p.name + "?", "Its AI keys stop working at once."))) return;
        await api("DELETE", orgPath("/projects/" + enc(p.id)));
        toast("Project deleted");
        go("#/projects");
      }, { class: "danger" }),
    ] : null,
  },
  h("p", {}, h("a", { href: "#/projects" }, "← All projects")),
  h("h2", {}, "AI keys"),
  h("p", {}, h("label", { class: "check", for: "show-deleted" }, showDeleted, " Show deleted keys")),
  box);
}
