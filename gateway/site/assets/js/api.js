// The API client of the shop page and the operator view: one bearer token per browser tab, kept
// in sessionStorage (gone when the tab closes, never in a URL or a cookie), JSON in and out, and
// every error turned into one message that names the field the service complained about.

const STORAGE_KEY = "saga-shop.session";

/** The signed-in account of this tab: {token, kind: "customer"|"operator", name, expiresAt}. */
export function session() {
  const raw = sessionStorage.getItem(STORAGE_KEY);
  if (!raw) return null;
  const saved = JSON.parse(raw);
  if (Date.now() >= saved.expiresAt) {
    sessionStorage.removeItem(STORAGE_KEY);
    return null;
  }
  return saved;
}

export function logOut() {
  sessionStorage.removeItem(STORAGE_KEY);
}

/** An API error: the HTTP status and the problem document (RFC 9457) the service answered. */
export class ApiError extends Error {
  constructor(status, problem) {
    const fields = (problem.errors || []).map((e) => `${e.field}: ${e.message}`);
    super(fields.length ? fields.join("; ") : problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

async function problemOf(response) {
  try {
    return await response.json();
  } catch {
    return { title: response.statusText || `HTTP ${response.status}` };
  }
}

/** Fetch a path of this gateway with the tab's token; the parsed JSON, or an ApiError. */
export async function api(path, { method = "GET", body, headers = {}, raw = false } = {}) {
  // A tab whose token has expired still shows its account: session() forgets the token, and a
  // 401 then takes the page back to its log-in, as a refused token does.
  const hadOne = sessionStorage.getItem(STORAGE_KEY) !== null;
  const current = session();
  const request = { method, headers: { Accept: "application/json", ...headers } };
  if (current) request.headers.Authorization = `Bearer ${current.token}`;
  if (body !== undefined) {
    request.headers["Content-Type"] = "application/json";
    request.body = JSON.stringify(body);
  }
  const response = await fetch(path, request);
  if (response.status === 401 && hadOne) {
    // The token expired or was refused: forget it, and let the page show its log-in again.
    logOut();
    window.dispatchEvent(new Event("saga:logged-out"));
  }
  if (!response.ok) throw new ApiError(response.status, await problemOf(response));
  if (raw) return response.text();
  return response.status === 204 ? null : response.json();
}

/** POST /api/v1/auth/token (OAuth 2.0, form-encoded) and keep the token for this tab. */
async function getToken(form, kind, name) {
  const response = await fetch("/api/v1/auth/token", {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded", Accept: "application/json" },
    body: new URLSearchParams(form),
  });
  if (!response.ok) throw new ApiError(response.status, await problemOf(response));
  const grant = await response.json();
  const saved = { token: grant.access_token, kind, name, scope: grant.scope,
                  expiresAt: Date.now() + (grant.expires_in - 30) * 1000 };
  sessionStorage.setItem(STORAGE_KEY, JSON.stringify(saved));
  return saved;
}

/** A customer logs in with the password grant; the name comes from /customers/me. */
export async function logInCustomer(email, password) {
  await getToken({ grant_type: "password", username: email, password }, "customer", email);
  const me = await api("/api/v1/customers/me");
  const saved = { ...session(), name: me.name };
  sessionStorage.setItem(STORAGE_KEY, JSON.stringify(saved));
  return saved;
}

/** An operator console logs in with the client credentials grant (scope ops). */
export async function logInOperator(clientId, clientSecret) {
  const saved = await getToken({ grant_type: "client_credentials", client_id: clientId,
                                 client_secret: clientSecret }, "operator", clientId);
  if (!saved.scope.split(" ").includes("ops")) {
    logOut();
    throw new Error(`client ${clientId} has no ops scope (it has: ${saved.scope})`);
  }
  return saved;
}

/** Sign up (POST /api/v1/customers), then log in as the new customer. */
export async function signUp(name, email, password) {
  await api("/api/v1/customers", { method: "POST", body: { name, email, password } });
  return logInCustomer(email, password);
}

/** Money arrives as a decimal string ("12.50"): shown as is, never through a float. */
export function money(amount, currency) {
  return `${amount} ${currency}`;
}

/** Replace an element's children with text and nodes: no HTML strings, so nothing to escape. */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? "" : value);
  }
  element.append(...children.flat().filter((c) => c !== null && c !== undefined));
  return element;
}

/**
 * Replace a region's children, unless nothing would change or the keyboard is inside it: a
 * periodic refresh must neither steal the focus from a button nor make a screen reader repeat
 * a live region that says the same as before.
 */
export function update(container, nodes) {
  if (container.contains(document.activeElement) && document.activeElement !== document.body) {
    return;
  }
  const next = document.createElement(container.tagName);
  next.append(...nodes);
  if (next.innerHTML === container.innerHTML) return;
  container.replaceChildren(...next.childNodes);
}

/** Say something in a status region (role="status" / aria-live), marked as an error or not. */
export function say(region, message, isError = false) {
  region.textContent = message;
  region.classList.toggle("error", isError);
}
