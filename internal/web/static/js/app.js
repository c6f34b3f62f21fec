// Keybridge's web UI: a hash router over the JSON API. Pages live in
// ./pages; each exports render functions that return nodes.
import { h, clear } from "./dom.js";
import { api, session } from "./api.js";
import { state, can, loading, errorBox } from "./ui.js";
import * as auth from "./pages/auth.js";
import * as keys from "./pages/apikeys.js";
import * as providers from "./pages/providers.js";
import * as projects from "./pages/projects.js";
import * as creds from "./pages/credentials.js";
import * as members from "./pages/members.js";
import * as audit from "./pages/audit.js";
import * as usage from "./pages/usage.js";
import * as connect from "./pages/connect.js";

// routes: hash path pattern → page. perm hides the page (and its nav
// entry) from those who may not use it.
const routes = [
  { path: "dashboard", title: "Dashboard", nav: true, perm: "usage:read", render: usage.dashboard },
  { path: "providers", title: "Providers", nav: true, perm: "providers:read", render: providers.list },
  { path: "providers/:name", title: "Provider", perm: "providers:read", render: providers.detail },
  { path: "api-keys", title: "API keys", nav: true, render: keys.list },
  { path: "api-keys/new", title: "API keys", render: (p) => keys.list({ ...p, create: true }) },
  { path: "projects", title: "Projects", nav: true, perm: "projects:read", render: projects.list },
  { path: "projects/:id", title: "Project", perm: "projects:read", render: projects.detail },
  { path: "credentials", title: "My provider keys", nav: true, render: creds.list },
  { path: "members", title: "Members", nav: true, perm: "members:read", render: members.list },
  { path: "usage", title: "Usage", nav: true, perm: "usage:read", render: usage.usage },
  { path: "audit", title: "Audit log", nav: true, perm: "audit:read", render: audit.list },
  { path: "connect", title: "Connect a client", nav: true, render: connect.page },
  { path: "account", title: "Account", nav: true, render: auth.account },
];

function match(hash) {
  const parts = hash.replace(/^#\/?/, "").split("?")[0].split("/").filter(Boolean).map(decodeURIComponent);
  for (const r of routes) {
    const pat = r.path.split("/");
    if (pat.length !== parts.length) continue;
    const params = {};
    if (pat.every((p, i) => (p.startsWith(":") ? ((params[p.slice(1)] = parts[i]), true) : p === parts[i]))) return { route: r, params };
  }
  return null;
}

export function home() {
  return can("usage:read") ? "#/dashboard" : "#/api-keys";
}

export function go(hash) {
  if (location.hash === hash) render(); else location.hash = hash;
}

const root = () => document.getElementById("app");

// refreshMe reloads who the user is and which orgs they are in.
export async function refreshMe() {
  state.me = await api("GET", "/api/v1/users/me");
  const orgs = state.me.orgs || [];
  const want = sessionStorage.getItem("kb.org");
  state.org = orgs.find((o) => o.slug === want) || orgs[0] || null;
}

function nav(current) {
  const orgs = state.me.orgs || [];
  const switcher = h("select", { id: "org-switcher", "aria-label": "Organisation" },
    orgs.map((o) => h("option", { value: o.slug, selected: state.org && o.slug === state.org.slug }, o.name + " (" + o.role + ")")));
  switcher.addEventListener("change", () => {
    state.org = orgs.find((o) => o.slug === switcher.value);
    sessionStorage.setItem("kb.org", state.org.slug);
    render();
  });
  const menuBtn = h("button", { type: "button", class: "menu-toggle", "aria-expanded": "false", "aria-controls": "nav-links" }, "Menu");
  const links = h("ul", { id: "nav-links", class: "nav-links" },
    routes.filter((r) => r.nav && (!r.perm || can(r.perm))).map((r) =>
      h("li", {}, h("a", { href: "#/" + r.path, onclick: () => { if (location.hash === "#/" + r.path) render(); }, "aria-current": current && current.path.split("/")[0] === r.path ? "page" : null }, r.title))),
    h("li", {}, h("button", { type: "button", class: "link", id: "logout", onclick: logout }, "Sign out")));
  menuBtn.addEventListener("click", () => {
    const open = links.classList.toggle("open");
    menuBtn.setAttribute("aria-expanded", String(open));
  });
  return h("nav", { class: "nav", "aria-label": "Main" },
    h("div", { class: "brand-row" }, h("a", { class: "brand", href: home() }, "Keybridge"), menuBtn),
    h("div", { class: "org-row" }, orgs.length > 1 ? h("label", { for: "org-switcher", class: "sr-only" }, "Organisation") : null,
      orgs.length > 1 ? switcher : h("span", { class: "org-name" }, state.org ? state.org.name + " · " + state.org.role : "no org")),
    h("p", { class: "who" }, state.me.user.email),
    links);
}

async function logout() {
  try { await api("POST", "/api/v1/auth/logout"); } catch (e) { /* signed out either way */ }
  session.csrf = "";
  state.me = null;
  location.hash = "#/login";
  render();
}

let rendering = 0;
export async function render() {
  const n = ++rendering;
  const app = root();
  const hash = location.hash || "";
  if (!state.me || !session.csrf) {
    // Unsafe requests need the CSRF token this tab got at sign-in; a tab
    // without one signs in again.
    state.me = null;
    document.title = "Sign in · Keybridge";
    clear(app, auth.login({ onDone: afterSignIn, note: hash && hash !== "#/login" ? "Sign in to continue." : "" }));
    return;
  }
  const m = match(hash);
  if (!m) { location.replace(home()); return; }
  const main = h("main", { id: "main", tabindex: "-1" });
  clear(app, h("a", { class: "skip", href: "#main", onclick: (e) => { e.preventDefault(); main.focus(); } }, "Skip to content"), nav(m.route), main);
  document.title = m.route.title + " · Keybridge";
  if (!state.org) {
    clear(main, errorBox({ message: "You are not a member of any organisation yet. Ask an admin for an invitation." }));
    return;
  }
  if (m.route.perm && !can(m.route.perm)) {
    clear(main, errorBox({ message: "Your role in " + state.org.name + " does not allow this page." }));
    return;
  }
  clear(main, loading());
  try {
    const node = await m.route.render(m.params);
    if (n !== rendering) return;
    clear(main, node);
  } catch (e) {
    if (n !== rendering) return;
    clear(main, errorBox(e));
  }
  const h1 = main.querySelector("h1");
  if (h1 && document.activeElement && !document.activeElement.closest?.("#org-switcher")) h1.focus({ preventScroll: true });
}

async function afterSignIn(next) {
  await refreshMe();
  const want = next || (!location.hash || location.hash === "#/login" ? home() : location.hash);
  go(want);
}

auth.onReloadMe(async () => { await refreshMe(); render(); });

api.onUnauthenticated = () => {
  if (state.me) {
    state.me = null;
    session.csrf = "";
    render();
  }
};

async function boot() {
  const app = root();
  clear(app, loading());
  window.addEventListener("hashchange", render);
  const path = location.pathname;
  if (path === "/setup" || path === "/invite") {
    // The one-time token leaves the address bar (and history) at once.
    const token = new URLSearchParams(location.search).get("token") || "";
    history.replaceState(null, "", "/");
    if (path === "/setup") {
      document.title = "Set up · Keybridge";
      clear(app, auth.setup({ token, onDone: () => afterSignIn("#/api-keys/new") }));
      return;
    }
    try { await refreshMe(); } catch (e) { state.me = null; }
    document.title = "Accept invitation · Keybridge";
    clear(app, auth.invite({ token, me: state.me, onDone: () => afterSignIn("#/api-keys/new") }));
    return;
  }
  if (session.csrf) {
    try { await refreshMe(); } catch (e) { state.me = null; }
  }
  render();
}

boot();
