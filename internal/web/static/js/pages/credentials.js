// Personal provider keys (SPEC §6): a user's own upstream credential for
// providers whose key source is "user" or "user_or_org".
import { h, fmtTime, ago } from "../dom.js";
import { api, listAll, enc } from "../api.js";
import { state, can, orgPath, page, table, empty, button, confirmDialog, form, formDialog, toast, load } from "../ui.js";

export async function list() {
  const box = h("div", { id: "credentials" });
  const providers = can("providers:read") ? await listAll(orgPath("/providers")) : [];
  const byId = Object.fromEntries(providers.map((p) => [p.id, p]));
  const reload = () => load(box, async () => {
    const items = (await listAll("/api/v1/users/me/credentials")).filter((c) => c.org_id === state.org.id);
    if (!items.length) return empty("You have no personal provider keys in " + state.org.name + ". Add one where a provider asks each person to bring their own key.");
    return table([
      { label: "Provider", cell: (c) => (byId[c.provider_id] ? byId[c.provider_id].name : c.provider_id) },
      { label: "Hint", cell: (c) => h("code", {}, c.hint) },
      { label: "Added", cell: (c) => fmtTime(c.created_at) },
      { label: "Last used", cell: (c) => ago(c.last_used_at) },
      { label: "Actions", cell: (c) => {
        const name = byId[c.provider_id] ? byId[c.provider_id].name : "provider";
        return h("div", { class: "row-actions" },
          button("Replace", () => formDialog("Replace your " + name + " key", {
            fields: [{ name: "api_key", label: "New API key", type: "password", required: true }],
            onSubmit: async (v) => { await api("PATCH", "/api/v1/users/me/credentials/" + enc(c.id), v); toast("Key replaced"); reload(); },
          }), { aria: "Replace " + name + " key" }),
          button("Delete", async () => {
            if (!(await confirmDialog("Delete your " + name + " key?", "Calls through " + name + " that need your own key will be refused until you add another."))) return;
            await api("DELETE", "/api/v1/users/me/credentials/" + enc(c.id));
            reload();
          }, { class: "danger", aria: "Delete " + name + " key" }));
      } },
    ], items, "My provider keys");
  });
  reload();
  const wants = providers.filter((p) => p.key_source !== "org");
  const choices = (wants.length ? wants : providers).map((p) => [p.name, p.name + " (" + p.key_source + ")"]);
  const add = form({
    label: "Add a personal key", submit: "Add key",
    fields: [
      { name: "provider", label: "Provider", type: "select", options: choices, hint: "Providers set to use each user's own key are listed first; on the others your key is used only if the provider is switched to it." },
      { name: "api_key", label: "Your API key", type: "password", required: true, hint: "Stored encrypted. Only you can change it; it is never shown again, only a hint." },
    ],
    onSubmit: async (v, { el }) => {
      await api("POST", "/api/v1/users/me/credentials", { org: state.org.slug, ...v });
      el.reset();
      toast("Key added");
      reload();
    },
  });
  add.el.id = "credential-form";
  return page("My provider keys", { intro: "Your own provider keys, for providers where each person uses their own account. Admins see only whether you have one." },
    box,
    h("h2", {}, "Add a key"),
    choices.length ? add.el : empty("No providers in " + state.org.name + " yet."));
}
