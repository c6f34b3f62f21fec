// Members of the org (SPEC §2): invite, change role, remove.
import { h, fmtTime } from "../dom.js";
import { api, listAll, enc } from "../api.js";
import { state, can, orgPath, page, table, empty, badge, button, confirmDialog, formDialog, secretDialog, toast, load } from "../ui.js";
import { refreshMe, go } from "../app.js";

function roles() {
  const out = [["member", "member"], ["admin", "admin"]];
  if (state.org.role === "owner") out.push(["owner", "owner"]);
  return out;
}

function invite(reload) {
  return formDialog("Invite a member", {
    submit: "Create invitation",
    intro: "Keybridge makes a one-time link for them: they open it, set a password (or sign in, if they already have an account) and create their own API key.",
    fields: [
      { name: "email", label: "Email", type: "email", required: true },
      { name: "name", label: "Name" },
      { name: "role", label: "Role", type: "select", options: roles(), value: "member" },
    ],
    onSubmit: async (v) => {
      const out = await api("POST", orgPath("/members"), v);
      const link = out.invite_url;
      delete out.invite_url; delete out.invite_token;
      setTimeout(() => secretDialog("Invitation for " + v.email, [["Invitation link", link]],
        "Send this link to " + v.email + " yourself: it works once and expires in 7 days. You will not see this again.").then(reload), 0);
    },
  });
}

export async function list() {
  const box = h("div", { id: "members" });
  const providers = await listAll(orgPath("/providers")).catch(() => []);
  const pname = Object.fromEntries(providers.map((p) => [p.id, p.name]));
  const write = can("members:write");
  const reload = () => load(box, async () => {
    const items = await listAll(orgPath("/members"));
    if (!items.length) return empty("No members.");
    return table([
      { label: "Email", cell: (m) => h("div", {}, h("strong", {}, m.email), m.user_id === state.me.user.id ? h("span", { class: "muted" }, " (you)") : null) },
      { label: "Name", cell: (m) => m.name || "—" },
      { label: "Role", cell: (m) => badge(m.role, m.role === "owner" ? "ok" : "") },
      { label: "Status", cell: (m) => (m.invited ? h("span", {}, badge("invited", "warn"), m.invite_expires_at ? h("span", { class: "muted" }, " until " + fmtTime(m.invite_expires_at)) : null) : "joined " + fmtTime(m.created_at)) },
      { label: "Personal keys", cell: (m) => Object.entries(m.credentials || {}).filter(([, v]) => v).map(([id]) => pname[id] || id).join(", ") || "—" },
      write ? { label: "Actions", cell: (m) => h("div", { class: "row-actions" },
        (state.org.role === "owner" || m.role !== "owner") ? button("Change role", () => formDialog("Role of " + m.email, {
          fields: [{ name: "role", label: "Role", type: "select", options: roles(), value: m.role }],
          intro: "The last owner cannot be demoted: make someone else owner first.",
          onSubmit: async (v) => {
            await api("PATCH", orgPath("/members/" + enc(m.user_id)), v);
            toast(m.email + " is now " + v.role);
            if (m.user_id === state.me.user.id) { await refreshMe(); go("#/members"); } else reload();
          },
        }), { aria: "Change role of " + m.email }) : null,
        (state.org.role === "owner" || m.role !== "owner") ? button("Remove", async () => {
          if (!(await confirmDialog("Remove " + m.email + "?", "They lose access to " + state.org.name + " at once, and so do their API keys here.", "Remove"))) return;
          await api("DELETE", orgPath("/members/" + enc(m.user_id)));
          toast(m.email + " removed");
          reload();
        }, { class: "danger", aria: "Remove " + m.email }) : null) } : null,
    ].filter(Boolean), items, "Members");
  });
  reload();
  return page("Members", {
    intro: "Who is in " + state.org.name + " and with what role. Members use providers and make their own keys; admins manage providers, projects, members, usage and the audit log; owners also manage owners.",
    actions: write ? button("Invite member", () => invite(reload), { class: "primary" }) : null,
  },
  h("p", { class: "note" }, "An organisation always keeps at least one owner: the last owner cannot be removed or demoted (Keybridge answers 409). Make someone else owner first."),
  box);
}
