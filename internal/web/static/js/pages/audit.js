// The audit log (SPEC §8): filters, pages, each event's changes, and the
// hash chain's verification.
import { h, clear, fmtTime } from "../dom.js";
import { api } from "../api.js";
import { orgPath, page, table, empty, badge, button, form, load, errorBox, loading } from "../ui.js";

const show = (v) => (v === null || v === undefined ? "—" : typeof v === "string" ? v : JSON.stringify(v));

function changes(ev) {
  const entries = Object.entries(ev.changes || {});
  if (!entries.length) return "—";
  return h("details", {},
    h("summary", {}, entries.length + (entries.length === 1 ? " change" : " changes")),
    h("dl", { class: "facts changes" }, entries.map(([k, c]) => [h("dt", {}, k), h("dd", {}, show(c.old), " → ", show(c.new))])));
}

export async function list() {
  const box = h("div", { id: "audit-events" });
  const verifyBox = h("div", { id: "audit-verify", "aria-live": "polite" });
  let filters = {};
  const cursors = [""]; // cursors[i] starts page i
  let at = 0;
  const pager = h("div", { class: "actions pager" });
  const reload = () => load(box, async () => {
    const q = new URLSearchParams({ ...filters, limit: "50" });
    if (cursors[at]) q.set("cursor", cursors[at]);
    const out = await api("GET", orgPath("/audit-events?" + q));
    const items = out.items || [];
    cursors[at + 1] = out.next_cursor || "";
    clear(pager,
      at > 0 ? button("Previous page", () => { at--; reload(); }) : null,
      h("span", { class: "muted" }, "Page " + (at + 1)),
      out.next_cursor ? button("Next page", () => { at++; reload(); }) : null);
    if (!items.length) return empty(Object.keys(filters).length ? "No event matches these filters." : "No events yet.");
    return table([
      { label: "Time", cell: (e) => fmtTime(e.time) },
      { label: "Actor", cell: (e) => h("div", {}, e.actor.email || e.actor.id || e.actor.type, h("div", { class: "muted" }, e.actor.type)) },
      { label: "Action", cell: (e) => h("code", {}, e.action) },
      { label: "Resource", cell: (e) => h("div", {}, e.resource.name || e.resource.id || "—", h("div", { class: "muted" }, e.resource.type)) },
      { label: "From", cell: (e) => h("div", {}, e.ip || "—", h("div", { class: "muted" }, "req " + (e.request_id || "—"))) },
      { label: "Changes", cell: changes },
    ], items, "Audit events");
  });
  const f = form({
    label: "Filter events", submit: "Apply filters", class: "filters-form",
    fields: [
      { name: "action", label: "Action", placeholder: "api_key.suspend" },
      { name: "actor", label: "Actor", placeholder: "email or id" },
      { name: "resource_type", label: "Resource type", placeholder: "provider, api_key, …" },
      { name: "resource_id", label: "Resource id" },
      { name: "since", label: "Since", type: "datetime-local" },
      { name: "until", label: "Until", type: "datetime-local" },
    ],
    onSubmit: async (v) => { filters = v; cursors.length = 1; at = 0; reload(); },
  });
  f.el.id = "audit-filters";
  reload();
  return page("Audit log", {
    intro: "Every change, sign-in and key event, written in the same transaction as the change. Events form a hash chain: Verify chain proves none was altered or removed.",
    actions: button("Verify chain", async () => {
      clear(verifyBox, loading("Verifying"));
      try {
        const r = await api("GET", orgPath("/audit-events/verify"));
        clear(verifyBox, r.ok
          ? h("p", { class: "panel" }, badge("chain intact", "ok"), " " + r.events + " events verified.")
          : h("div", { class: "error", role: "alert" }, h("strong", {}, "The chain is broken"), " after " + r.events + " intact events: ",
            r.reason || "", r.first_bad_event ? " (first bad event " + (r.first_bad_event.id || "") + ", sequence " + (r.first_bad_event.seq ?? "?") + ")" : ""));
      } catch (e) { clear(verifyBox, errorBox(e)); }
    }),
  }, verifyBox, h("details", { class: "panel", open: true }, h("summary", {}, "Filters"), f.el), box, pager);
}
