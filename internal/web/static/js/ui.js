// Shared pieces of every page: state, permissions, forms, tables, dialogs.
import { h, clear, uid } from "./dom.js";

export const state = { me: null, org: null };

// can reports whether the signed-in user may do perm in the current org.
export function can(perm) {
  return !!(state.org && (state.org.permissions || []).includes(perm));
}

export function orgPath(rest = "") {
  return "/api/v1/orgs/" + encodeURIComponent(state.org.slug) + rest;
}

export function page(title, opts, ...body) {
  const o = opts || {};
  return h("section", { class: "page", "aria-labelledby": "page-title" },
    h("header", { class: "page-head" },
      h("div", {},
        h("h1", { id: "page-title", tabindex: "-1" }, title),
        o.intro ? h("p", { class: "intro" }, o.intro) : null),
      o.actions ? h("div", { class: "actions" }, o.actions) : null),
    body);
}

export function loading(what = "Loading") {
  return h("p", { class: "loading", role: "status", "aria-live": "polite" }, h("span", { class: "spinner", "aria-hidden": "true" }), what + "…");
}

export function errorBox(err) {
  if (!err) return h("div", { class: "error hidden", role: "alert" });
  const fields = Object.entries(err.fields || {});
  return h("div", { class: "error", role: "alert" },
    h("strong", {}, err.message || String(err)),
    fields.length ? h("ul", {}, fields.map(([k, v]) => h("li", {}, h("code", {}, k), ": " + v))) : null);
}

export function empty(text, action) {
  return h("div", { class: "empty" }, h("p", {}, text), action || null);
}

export function badge(text, kind) {
  return h("span", { class: ["badge", kind ? "badge-" + kind : ""] }, text);
}

// table renders rows with columns [{label, cell(row) -> node|string, class}].
export function table(columns, rows, caption) {
  return h("div", { class: "table-wrap" },
    h("table", {},
      caption ? h("caption", { class: "sr-only" }, caption) : null,
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.class }, c.label)))),
      h("tbody", {}, rows.map((r) => h("tr", {}, columns.map((c) => h("td", { class: c.class, "data-label": c.label }, c.cell(r))))))));
}

// load shows a loading state in el, runs fn, then puts fn's nodes in el, or
// the API's error.
export async function load(el, fn) {
  clear(el, loading());
  try {
    const out = await fn();
    clear(el, out);
  } catch (e) {
    clear(el, errorBox(e));
  }
}

// button runs an async action with the button busy, reporting errors in a
// toast (or the given box).
export function button(label, action, opts = {}) {
  const b = h("button", { type: "button", class: opts.class || "", "aria-label": opts.aria || null }, label);
  b.addEventListener("click", async () => {
    b.disabled = true;
    b.setAttribute("aria-busy", "true");
    try {
      await action(b);
    } catch (e) {
      if (opts.errors) clear(opts.errors, errorBox(e)); else toast(e.message, "bad");
    } finally {
      b.disabled = false;
      b.removeAttribute("aria-busy");
    }
  });
  return b;
}

let toastBox;
export function toast(msg, kind = "ok") {
  if (!toastBox) {
    toastBox = h("div", { class: "toasts", role: "status", "aria-live": "polite" });
    document.body.append(toastBox);
  }
  const t = h("div", { class: ["toast", "toast-" + kind] }, msg);
  toastBox.append(t);
  setTimeout(() => t.remove(), 5000);
}

// form builds a labelled form from field specs and calls onSubmit with the
// values; an API error is shown above the button with each of its fields
// next to the control of that name.
//
// Field: {name, label, type, value, options: [[value, label]], required,
// hint, placeholder, autocomplete, min, max}. Types: text, email, password,
// number, select, checkbox, checkboxes, textarea, datetime-local.
export function form(spec) {
  const controls = {};
  const fieldErrors = {};
  const errBox = h("div", { class: "form-error" });
  const submit = h("button", { type: "submit", class: "primary" }, spec.submit || "Save");
  const rows = spec.fields.filter(Boolean).map((f) => field(f, controls, fieldErrors));
  const el = h("form", { class: ["form", spec.class || ""], novalidate: true, "aria-label": spec.label || null },
    rows, errBox,
    h("div", { class: "form-actions" }, submit, spec.cancel ? h("button", { type: "button", onclick: spec.cancel }, "Cancel") : null, spec.extra || null));
  const values = () => {
    const out = {};
    for (const f of spec.fields.filter(Boolean)) {
      const c = controls[f.name];
      if (f.type === "checkbox") out[f.name] = c.checked;
      else if (f.type === "checkboxes") out[f.name] = c.filter((x) => x.checked).map((x) => x.value);
      else if (f.type === "number") { if (c.value.trim() !== "") out[f.name] = Number(c.value); }
      else if (f.type === "datetime-local") { if (c.value) out[f.name] = new Date(c.value).toISOString(); }
      else if (f.type === "password") { if (c.value !== "") out[f.name] = c.value; }
      else { const v = c.value.trim(); if (v !== "" || f.keepEmpty) out[f.name] = v; }
    }
    return out;
  };
  const showError = (e) => {
    for (const [n, box] of Object.entries(fieldErrors)) { box.textContent = ""; const c = controls[n]; if (c && c.setAttribute) c.removeAttribute("aria-invalid"); }
    clear(errBox, e ? errorBox(e) : null);
    if (!e) return;
    let first = null;
    for (const [k, v] of Object.entries(e.fields || {})) {
      // Provider settings are "settings.region" in the API, "s.region" here.
      const name = k.startsWith("settings.") ? "s." + k.slice(9) : k.split(".")[0];
      if (fieldErrors[name] || fieldErrors[k]) {
        (fieldErrors[name] || fieldErrors[k]).textContent = v;
        const c = controls[name] || controls[k];
        if (c && c.setAttribute) { c.setAttribute("aria-invalid", "true"); first = first || c; }
      }
    }
    // Keyboard users land on the first field the API refused; the alert
    // above the button is announced either way.
    if (first) first.focus();
  };
  el.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    showError(null);
    submit.disabled = true;
    submit.setAttribute("aria-busy", "true");
    const label = submit.textContent;
    submit.textContent = spec.busy || "Working…";
    try {
      await spec.onSubmit(values(), { controls, el });
    } catch (e) {
      showError(e);
    } finally {
      submit.disabled = false;
      submit.removeAttribute("aria-busy");
      submit.textContent = label;
    }
  });
  return { el, values, controls, showError };
}

function field(f, controls, fieldErrors) {
  const id = uid("f");
  const errId = id + "-err";
  const hintId = id + "-hint";
  const described = [f.hint ? hintId : null, errId].filter(Boolean).join(" ");
  const err = h("span", { class: "field-error", id: errId });
  fieldErrors[f.name] = err;
  const hint = f.hint ? h("span", { class: "hint", id: hintId }, f.hint) : null;
  if (f.type === "checkboxes") {
    const boxes = f.options.map(([v, l]) => h("input", { type: "checkbox", name: f.name, value: v, checked: (f.value || []).includes(v) }));
    controls[f.name] = boxes;
    return h("fieldset", { class: "field checks", "aria-describedby": described },
      h("legend", {}, f.label),
      h("div", { class: "check-grid" }, boxes.map((b, i) => h("label", { class: "check" }, b, " ", f.options[i][1]))), hint, err);
  }
  if (f.type === "checkbox") {
    const c = h("input", { type: "checkbox", id, name: f.name, checked: !!f.value, "aria-describedby": described });
    controls[f.name] = c;
    return h("div", { class: "field check-field" }, h("label", { for: id, class: "check" }, c, " ", f.label), hint, err);
  }
  let c;
  if (f.type === "select") {
    c = h("select", { id, name: f.name, "aria-describedby": described, required: f.required },
      f.options.map(([v, l]) => h("option", { value: v, selected: String(f.value ?? "") === String(v) }, l)));
    if (f.onchange) c.addEventListener("change", f.onchange);
  } else if (f.type === "textarea") {
    c = h("textarea", { id, name: f.name, rows: f.rows || 3, placeholder: f.placeholder, "aria-describedby": described }, f.value || "");
  } else {
    c = h("input", {
      id, name: f.name, type: f.type || "text", value: f.type === "password" ? "" : (f.value ?? ""),
      required: f.required, placeholder: f.placeholder, min: f.min, max: f.max,
      autocomplete: f.autocomplete || (f.type === "password" ? "new-password" : "off"),
      spellcheck: f.type === "password" ? "false" : null,
      "aria-describedby": described,
    });
  }
  controls[f.name] = c;
  return h("div", { class: ["field", f.wide ? "wide" : ""] }, h("label", { for: id }, f.label, f.required ? h("span", { class: "req", "aria-hidden": "true" }, " *") : null), c, hint, err);
}

// dialog opens a modal <dialog>; it is removed from the page when closed,
// with everything in it.
export function dialog(title, ...content) {
  const id = uid("dlg");
  const closeBtn = h("button", { type: "button", class: "close", "aria-label": "Close" }, "×");
  const d = h("dialog", { "aria-labelledby": id, class: "dialog" },
    h("div", { class: "dialog-head" }, h("h2", { id }, title), closeBtn),
    h("div", { class: "dialog-body" }, content));
  closeBtn.addEventListener("click", () => d.close());
  let resolve;
  const closed = new Promise((r) => { resolve = r; });
  const opener = document.activeElement;
  d.addEventListener("close", () => {
    d.replaceChildren();
    d.remove();
    if (opener && opener.isConnected && opener.focus) opener.focus();
    resolve(d.returnValue);
  });
  document.body.append(d);
  d.showModal();
  return { el: d, close: (v) => d.close(v), closed };
}

export function confirmDialog(title, message, confirmLabel = "Delete") {
  const yes = h("button", { type: "button", class: "danger" }, confirmLabel);
  const no = h("button", { type: "button" }, "Cancel");
  const dl = dialog(title, h("p", {}, message), h("div", { class: "form-actions" }, yes, no));
  yes.addEventListener("click", () => dl.close("yes"));
  no.addEventListener("click", () => dl.close("no"));
  no.focus();
  return dl.closed.then((v) => v === "yes");
}

// copyButton copies what get() returns to the clipboard.
export function copyButton(get, label = "Copy") {
  const b = h("button", { type: "button", class: "copy" }, label);
  b.addEventListener("click", async () => {
    const v = get();
    try {
      await navigator.clipboard.writeText(v);
    } catch (e) {
      // No clipboard API (a plain-http address that is not localhost):
      // select the text so the user can copy it.
      const sib = b.parentElement && b.parentElement.querySelector("input, textarea, pre");
      if (sib && sib.select) sib.select(); else if (sib) window.getSelection().selectAllChildren(sib);
      toast("Press Ctrl+C (⌘C) to copy the selected text", "info");
      return;
    }
    b.textContent = "Copied";
    setTimeout(() => { if (b.isConnected) b.textContent = label; }, 1500);
  });
  return b;
}

// secretDialog shows one-time values (a key's plaintext, an AI key's
// secret, an invitation link). They live only in this dialog's nodes: the
// dialog is removed from the page, and the values with it, when it closes.
// Callers drop their reference to the create response.
export function secretDialog(title, entries, note) {
  const body = entries.map(([label, value]) => {
    const id = uid("secret");
    const box = h("input", { id, class: "secret-value", readOnly: true, value, spellcheck: "false", autocomplete: "off" });
    return h("div", { class: "field secret" }, h("label", { for: id }, label), h("div", { class: "copy-row" }, box, copyButton(() => box.value)));
  });
  const done = h("button", { type: "button", class: "primary" }, "I have copied it — close");
  const dl = dialog(title,
    h("p", { class: "warn" }, note || "Copy it now: you will not see this again."),
    body, h("div", { class: "form-actions" }, done));
  done.addEventListener("click", () => dl.close());
  const first = dl.el.querySelector("input");
  if (first) { first.focus(); first.select(); }
  return dl.closed;
}

// formDialog opens a dialog holding a form from spec; onSubmit may return
// a value to close the dialog with.
export function formDialog(title, spec) {
  let dl;
  const f = form({ ...spec, cancel: () => dl.close(), onSubmit: async (v, ctx) => { await spec.onSubmit(v, ctx); dl.close("ok"); } });
  dl = dialog(title, spec.intro ? h("p", {}, spec.intro) : null, f.el);
  const first = f.el.querySelector("input, select, textarea");
  if (first) first.focus();
  return dl.closed;
}

export const PERMISSIONS = [
  "providers:read", "providers:write", "projects:read", "projects:write", "members:read",
  "members:write", "audit:read", "usage:read", "gateway:invoke", "api_keys:write",
];
