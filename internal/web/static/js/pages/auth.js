// Sign-in, first-run setup, accepting an invitation, and the account page.
import { h } from "../dom.js";
import { api, session } from "../api.js";
import { state, form, page, toast } from "../ui.js";

function card(title, intro, ...body) {
  return h("main", { id: "main", class: "auth" },
    h("div", { class: "auth-card" },
      h("p", { class: "brand" }, "Keybridge"),
      h("h1", { id: "page-title" }, title),
      intro ? h("p", { class: "intro" }, intro) : null,
      body));
}

export function login({ onDone, note }) {
  const f = form({
    label: "Sign in", submit: "Sign in", busy: "Signing in…",
    fields: [
      { name: "email", label: "Email", type: "email", required: true, autocomplete: "username" },
      { name: "password", label: "Password", type: "password", required: true, autocomplete: "current-password" },
    ],
    onSubmit: async (v) => {
      const out = await api("POST", "/api/v1/auth/login", { email: v.email || "", password: v.password || "" });
      session.csrf = out.csrf_token;
      await onDone();
    },
  });
  f.el.id = "login-form";
  return card("Sign in", note || "Keybridge keeps your AI provider keys and hands out its own.", f.el,
    h("p", { class: "hint" }, "No account yet? An admin of your organisation invites you; the invitation link lets you set a password."));
}

export function setup({ token, onDone }) {
  if (!token) {
    return card("Set up Keybridge", null, h("div", { class: "error", role: "alert" },
      "This page needs the one-time link that keybridge serve printed when it started on an empty database."));
  }
  const f = form({
    label: "Set up", submit: "Create organisation", busy: "Creating…",
    fields: [
      { name: "org", label: "Organisation slug", required: true, placeholder: "acme", hint: "Lower-case letters, digits and dashes; it appears in API paths." },
      { name: "name", label: "Your name", autocomplete: "name" },
      { name: "email", label: "Your email", type: "email", required: true, autocomplete: "username" },
      { name: "password", label: "Password", type: "password", required: true, hint: "You sign in with this email and password." },
    ],
    onSubmit: async (v) => {
      const out = await api("POST", "/api/v1/setup", { token, org: v.org || "", email: v.email || "", name: v.name || "", password: v.password || "" });
      session.csrf = out.csrf_token;
      await onDone();
    },
  });
  f.el.id = "setup-form";
  return card("Set up Keybridge", "Create your organisation and its owner. This link works once.", f.el);
}

export function invite({ token, me, onDone }) {
  if (!token) {
    return card("Accept invitation", null, h("div", { class: "error", role: "alert" }, "This page needs the invitation link you were sent."));
  }
  const signedIn = !!(me && session.csrf);
  const f = form({
    label: "Accept invitation", submit: "Accept invitation", busy: "Accepting…",
    fields: [
      signedIn ? null : { name: "name", label: "Your name", autocomplete: "name" },
      signedIn ? null : { name: "password", label: "Password", type: "password", required: true, hint: "New to Keybridge: choose one. Already have an account with this email: your current password (or sign in first and open the link again)." },
    ],
    onSubmit: async (v) => {
      const body = { token };
      if (v.password) body.password = v.password;
      if (v.name) body.name = v.name;
      const out = await api("POST", "/api/v1/auth/accept-invite", body);
      if (out && out.csrf_token) session.csrf = out.csrf_token;
      await onDone();
    },
  });
  f.el.id = "invite-form";
  return card("Accept invitation",
    signedIn ? "You are signed in as " + me.user.email + ". Accept to join the organisation that invited you (the invitation must be for this email)." : "Set your password to join the organisation that invited you.",
    f.el);
}

// reloadMe is set by app.js: it reloads who the user is and redraws.
let reloadMe = async () => {};
export function onReloadMe(fn) { reloadMe = fn; }

export function account() {
  const u = state.me.user;
  const nm = form({
    label: "Change name", submit: "Save name",
    fields: [
      { name: "name", label: "Name", value: u.name, required: true, keepEmpty: true, autocomplete: "name", hint: "How you are shown to the members of your organisations." },
    ],
    onSubmit: async (v) => {
      await api("PATCH", "/api/v1/users/me", v);
      toast("Name saved");
      await reloadMe();
    },
  });
  nm.el.id = "name-form";
  const pw = form({
    label: "Change password", submit: "Change password",
    fields: [
      { name: "current_password", label: "Current password", type: "password", autocomplete: "current-password", hint: "Leave empty if you have never set one (an owner made by keybridge setup without --password-stdin)." },
      { name: "new_password", label: "New password", type: "password", required: true, autocomplete: "new-password" },
    ],
    onSubmit: async (v, { el }) => {
      await api("POST", "/api/v1/users/me/password", v);
      el.reset();
      toast("Password changed. Your other sessions have been signed out.");
    },
  });
  pw.el.id = "password-form";
  const org = form({
    label: "Create an organisation", submit: "Create organisation",
    fields: [
      { name: "slug", label: "Slug", required: true, placeholder: "acme-labs", hint: "Lower-case letters, digits and dashes." },
      { name: "name", label: "Display name" },
    ],
    onSubmit: async (v, { el }) => {
      const o = await api("POST", "/api/v1/orgs", v);
      el.reset();
      sessionStorage.setItem("kb.org", o.slug);
      toast("Organisation " + o.slug + " created: you are its owner");
      await reloadMe();
    },
  });
  org.el.id = "org-form";
  return page("Account", { intro: "Who you are in Keybridge." },
    h("dl", { class: "facts" },
      h("dt", {}, "Email"), h("dd", { id: "account-email" }, u.email),
      h("dt", {}, "Organisations"), h("dd", {}, (state.me.orgs || []).map((o) => o.name + " (" + o.role + ")").join(", ") || "none")),
    h("h2", {}, "Name"), nm.el,
    h("h2", {}, "Password"), pw.el,
    h("h2", {}, "New organisation"), h("p", { class: "muted" }, "You become its owner; switch between your organisations in the navigation."), org.el);
}
