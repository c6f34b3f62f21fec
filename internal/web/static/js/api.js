// The JSON API client. The session cookie is HttpOnly; the CSRF token the
// API answers on sign-in is kept in this tab's sessionStorage (it is bound
// to the session and useless without the cookie) and sent as X-CSRF-Token
// on every unsafe request (SPEC §2). Answers are never stored anywhere.

export class APIError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || ("the server answered " + status));
    this.status = status;
    this.code = e.code || "";
    this.fields = e.fields || {};
  }
}

export const session = {
  get csrf() { return sessionStorage.getItem("kb.csrf") || ""; },
  set csrf(v) { if (v) sessionStorage.setItem("kb.csrf", v); else sessionStorage.removeItem("kb.csrf"); },
};

export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && method !== "HEAD" && session.csrf) headers["X-CSRF-Token"] = session.csrf;
  let resp;
  try {
    resp = await fetch(path, {
      method, headers, credentials: "same-origin", cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new APIError(0, { error: { message: "cannot reach Keybridge: " + e.message } });
  }
  let data = null;
  if (resp.status !== 204) {
    const text = await resp.text();
    if (text) {
      try { data = JSON.parse(text); } catch (e) { data = null; }
    }
  }
  if (!resp.ok) {
    const err = new APIError(resp.status, data);
    if (resp.status === 401 && typeof api.onUnauthenticated === "function") api.onUnauthenticated(err);
    throw err;
  }
  return data;
}

// list fetches every page of a list endpoint (SPEC §1), up to max items.
export async function listAll(path, max = 2000) {
  const items = [];
  let cursor = "";
  for (;;) {
    const sep = path.includes("?") ? "&" : "?";
    const page = await api("GET", path + sep + "limit=500" + (cursor ? "&cursor=" + encodeURIComponent(cursor) : ""));
    items.push(...(page.items || []));
    cursor = page.next_cursor || "";
    if (!cursor || items.length >= max) return items;
  }
}

export const enc = encodeURIComponent;
