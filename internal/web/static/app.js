// Keybridge web UI: each page's form posts JSON to the API. The session
// cookie is HttpOnly; the CSRF token the API returns is kept in
// sessionStorage and sent as X-CSRF-Token with unsafe requests.
"use strict";

const $ = (id) => document.getElementById(id);

async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const csrf = sessionStorage.getItem("csrf");
  if (method !== "GET" && csrf) headers["X-CSRF-Token"] = csrf;
  const resp = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  if (resp.status !== 204) {
    try { data = await resp.json(); } catch (e) { data = null; }
  }
  if (!resp.ok) {
    const err = (data && data.error) || {};
    const fields = err.fields ? Object.entries(err.fields).map(([k, v]) => k + " " + v).join("; ") : "";
    throw new Error(fields || err.message || ("HTTP " + resp.status));
  }
  return data;
}

// token reads ?token= and then drops it from the address bar and history.
function token() {
  const t = new URLSearchParams(location.search).get("token") || "";
  history.replaceState(null, "", location.pathname);
  return t;
}

function signedIn(data) {
  if (data && data.csrf_token) sessionStorage.setItem("csrf", data.csrf_token);
}

function onSubmit(form, handler) {
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const errBox = form.querySelector(".error");
    errBox.textContent = "";
    const button = form.querySelector("button");
    button.disabled = true;
    try {
      await handler(new FormData(form));
    } catch (e) {
      errBox.textContent = e.message;
    } finally {
      button.disabled = false;
    }
  });
}

async function landing() {
  try {
    const me = await api("GET", "/api/v1/users/me");
    $("me-email").textContent = me.user.email;
    const list = $("orgs");
    list.replaceChildren(...me.orgs.map((o) => {
      const li = document.createElement("li");
      li.textContent = o.name + " (" + o.slug + ") - " + o.role;
      return li;
    }));
    $("signed-in").classList.remove("hidden");
    $("signed-out").classList.add("hidden");
  } catch (e) {
    $("signed-out").classList.remove("hidden");
    $("signed-in").classList.add("hidden");
  }
}

document.addEventListener("DOMContentLoaded", () => {
  if ($("login-form")) {
    onSubmit($("login-form"), async (f) => {
      signedIn(await api("POST", "/api/v1/auth/login", { email: f.get("email"), password: f.get("password") }));
      $("password").value = "";
      await landing();
    });
    $("logout").addEventListener("click", async () => {
      await api("POST", "/api/v1/auth/logout");
      sessionStorage.removeItem("csrf");
      await landing();
    });
    landing();
  }
  if ($("setup-form")) {
    const t = token();
    onSubmit($("setup-form"), async (f) => {
      const body = { token: t, org: f.get("org"), email: f.get("email"), password: f.get("password") };
      if (f.get("name")) body.name = f.get("name");
      signedIn(await api("POST", "/api/v1/setup", body));
      $("setup-form").classList.add("hidden");
      $("done").classList.remove("hidden");
    });
  }
  if ($("invite-form")) {
    const t = token();
    onSubmit($("invite-form"), async (f) => {
      const body = { token: t, password: f.get("password") };
      if (f.get("name")) body.name = f.get("name");
      signedIn(await api("POST", "/api/v1/auth/accept-invite", body));
      $("invite-form").classList.add("hidden");
      $("done").classList.remove("hidden");
    });
  }
});
