// The operator view: health, the kitchen board and its line, stock, the saga's metrics as live
// charts, recent orders (with their trace and logs), dead letters with replay, fault switches.
// Everything comes from the API with an operator's token (client credentials, scope ops). The
// board and the charts refresh on a timer: they summarise many orders, and no stream exists
// for them; a single order's timeline is the one thing pushed (the shop page follows it).

import { api, ApiError, h, logInOperator, logOut, money, say, session, update } from "./api.js";
import { LineChart } from "./charts.js";
import { byLabel, parse, quantile, sum } from "./metrics.js";

const $ = (id) => document.getElementById(id);
const SERVICES = ["order", "payment", "production", "identity"];
const SAGA_SERVICES = ["order", "payment", "production"];
const BOARD = ["queued", "in_progress", "done"];
const REFRESH_MS = 2000;
const METRICS_MS = 5000;
// Listing dead letters holds them unacknowledged for the moment of the read (sagakit/
// deadletters.py), and a second listing meanwhile sees fewer: read them seldom.
const DEAD_LETTERS_MS = 15000;
const LIST_SPACING_MS = 250;  // the gateway refills a client's list bucket at 5 r/s
let timers = [];
let charts = null;

// --- Log in ----------------------------------------------------------------------------------

function isOperator() {
  const current = session();
  return current && current.kind === "operator";
}

function showConsole() {
  const on = isOperator();
  $("ops-login").hidden = on;
  $("console").hidden = !on;
  $("who").textContent = on ? `Operator ${session().name}` : "Not logged in";
  timers.forEach(clearInterval);
  timers = [];
  if (!on) return;
  refresh();
  sampleMetrics();
  loadFaults();
  loadDeadLetters();
  timers.push(setInterval(refresh, REFRESH_MS), setInterval(sampleMetrics, METRICS_MS),
              setInterval(loadDeadLetters, DEAD_LETTERS_MS));
}

async function onLogIn(event) {
  event.preventDefault();
  const form = event.target;
  say($("login-status"), "Logging in…");
  try {
    await logInOperator(form.client_id.value.trim(), form.client_secret.value);
    form.client_secret.value = "";
    say($("login-status"), "");
    showConsole();
  } catch (error) {
    say($("login-status"), `Could not log in: ${error.message}`, true);
  }
}

// --- The periodic views ----------------------------------------------------------------------

async function refresh() {
  await Promise.allSettled([loadHealth(), loadBoard(), loadStock(), loadOrders()]);
  $("refreshed").textContent = `Updated ${new Date().toLocaleTimeString()}`;
}

async function loadHealth() {
  const rows = await Promise.all(SERVICES.map(async (service) => {
    let text;
    let ok = false;
    try {
      const response = await fetch(`/health/${service}/ready`, { cache: "no-store" });
      const body = await response.json();
      ok = response.ok;
      text = ok ? "ready" : `not ready: ${JSON.stringify(body.checks || body)}`;
    } catch {
      text = "unreachable";
    }
    return h("li", { class: ok ? "ok" : "bad", "data-service": service },
      h("strong", {}, service), ` ${text}`);
  }));
  update($("health"), rows);
}

function ticketItem(ticket) {
  const what = ticket.lines.map((l) => `${l.quantity}× ${l.name}`).join(", ");
  const since = ticket.finished_at || ticket.started_at || ticket.created_at;
  return h("li", { "data-order": ticket.order_id },
    h("span", { class: "ticket" }, what), h("br"),
    h("span", { class: "hint" }, `order ${ticket.order_id.slice(0, 8)} · `,
      h("time", { datetime: since }, new Date(since).toLocaleTimeString())));
}

async function loadBoard() {
  const [line, ...columns] = await Promise.all([
    api("/api/v1/production/line"),
    ...BOARD.map((status) => api(`/api/v1/production/queue?status=${status}&limit=12`)),
  ]);
  $("line-state").textContent = line.paused ? "paused" : "running";
  $("line-toggle").textContent = line.paused ? "Resume the line" : "Pause the line";
  $("line-toggle").dataset.paused = String(line.paused);
  // The columns are read at slightly different moments: a ticket that moved on meanwhile is in
  // two of them. It is shown once, in the furthest (tickets only move forward).
  const further = new Set();
  for (let i = BOARD.length - 1; i >= 0; i--) {
    columns[i] = columns[i].filter((ticket) => !further.has(ticket.order_id));
    columns[i].forEach((ticket) => further.add(ticket.order_id));
  }
  BOARD.forEach((status, i) => {
    update($(`board-${status}`), columns[i].length ? columns[i].map(ticketItem)
      : [h("li", { class: "hint" }, "none")]);
    $(`count-${status}`).textContent = `(${columns[i].length}${columns[i].length === 12 ? "+" : ""})`;
  });
}

async function onToggleLine() {
  const paused = $("line-toggle").dataset.paused !== "true";
  $("line-toggle").disabled = true;
  try {
    await api("/api/v1/production/line", { method: "PUT", body: { paused } });
    await loadBoard();
  } finally {
    $("line-toggle").disabled = false;
  }
}

async function loadStock() {
  const levels = await api("/api/v1/production/stock");
  update($("stock"), levels.map((level) => h("tr", {},
    h("th", { scope: "row" }, level.sku),
    h("td", { "data-available": level.sku }, String(level.available)),
    h("td", {}, h("form", { class: "inline", onsubmit: (event) => onRestock(event, level.sku) },
      h("input", { type: "number", min: 0, max: 1000000, name: "available", value: level.available,
                   "aria-label": `Units of ${level.sku} on the shelf` }),
      h("button", { type: "submit" }, "Restock"))))));
}

async function onRestock(event, sku) {
  event.preventDefault();
  const available = Number(event.target.available.value);
  try {
    await api(`/api/v1/production/stock/${encodeURIComponent(sku)}`,
              { method: "PUT", body: { available } });
    say($("stock-status"), `${sku}: ${available} on the shelf.`);
    $("stock").querySelector(`[data-available="${sku}"]`).textContent = String(available);
  } catch (error) {
    say($("stock-status"), `${sku} not restocked: ${error.message}`, true);
  }
}

async function loadOrders() {
  const status = $("order-filter").value;
  const orders = await api(`/api/v1/orders?limit=25${status ? `&status=${status}` : ""}`);
  const counts = {};
  for (const order of orders) counts[order.status] = (counts[order.status] || 0) + 1;
  update($("order-counts"), Object.entries(counts).map(([status, n]) =>
    h("span", { class: "badge", "data-status": status }, `${status}: ${n}`)));
  update($("orders"), orders.map((order) => h("tr", {},
    h("td", {}, new Date(order.created_at).toLocaleTimeString()),
    h("td", {}, h("button", { type: "button", class: "link", onclick: () => showOrder(order.id) },
      h("code", {}, order.id.slice(0, 8)))),
    h("td", {}, h("span", { class: "badge", "data-status": order.status }, order.status)),
    h("td", {}, money(order.total, order.currency)))));
}

/** One order: its timeline, and where to read its trace (Jaeger) and its logs (Seq). */
async function showOrder(id) {
  const order = await api(`/api/v1/orders/${id}`);
  const box = $("order-detail");
  box.hidden = false;
  box.replaceChildren(
    h("h3", {}, `Order ${order.id}`),
    h("p", {}, `${order.customer.name} (${order.customer.email}) · `,
      money(order.total, order.currency), " · ",
      h("span", { class: "badge", "data-status": order.status }, order.status),
      order.cancellation_reason ? ` — ${order.cancellation_reason}` : ""),
    h("ol", { class: "timeline" }, ...order.timeline.map((step) => h("li", {},
      h("span", { class: "badge", "data-status": step.status }, step.status), " ",
      new Date(step.at).toLocaleTimeString(), step.reason ? ` — ${step.reason}` : ""))),
    h("p", {}, "Trace ", h("code", {}, order.trace_id), ": ",
      !order.trace_recorded ? "not recorded (sampled out under load)"
        : order.links.trace
          ? h("a", { href: order.links.trace, rel: "noopener", target: "_blank" }, "in Jaeger")
          : "not exported here (its lines carry this trace id)",
      " · ",
      order.links.logs
        ? h("a", { href: order.links.logs, rel: "noopener", target: "_blank" }, "its logs in Seq")
        : "no log backend here"));
}

// Every service's dead letters (the identity's too: its customer-data requests), then what was
// published with no queue bound for it (saga.unrouted: replayed where it was sent).
const PARKED = new Map([
  ...SERVICES.map((service) => [service, `/api/v1/ops/${service}/dead-letters`]),
  ["unrouted", "/api/v1/ops/unrouted"]]);

async function loadDeadLetters() {
  // One list after the other, a moment apart: five at once, with the board's and the orders'
  // own polls, used up the gateway's burst of list requests for one client (two tabs of this
  // page got 429s).
  const parked = [];
  for (const [name, path] of PARKED) {
    try {
      parked.push([name, await api(`${path}?limit=20`)]);
    } catch (error) {
      parked.push([name, { error: error.message, messages: [], total: 0 }]);
    }
    await new Promise((resolve) => setTimeout(resolve, LIST_SPACING_MS));
  }
  update($("dead-letters"), parked.map(([name, list]) => h("div",
    { class: "dlq", "data-queue": name },
    h("h3", {}, `${name}: ${list.error ? list.error : `${list.total} parked`}`),
    list.total ? h("button", { type: "button", onclick: () => replay(name, null) },
      `Replay all of ${name}`) : null,
    h("ul", {}, ...list.messages.map((m) => h("li", { "data-event": m.id },
      h("code", {}, m.event_type || m.routing_key || "?"),
      m.order_id ? ` order ${m.order_id}: ` : " (no order): ",
      h("span", { class: "reason", title: m.reason || "" }, brief(m.reason || "")), " ",
      h("button", { type: "button", onclick: () => replay(name, m.id),
                    "aria-label": `Replay ${m.event_type || "message"}` +
                      (m.order_id ? ` of order ${m.order_id}` : "") }, "Replay")))))));
}

/** The first line of a long reason (a validation error can run for lines), at most 140 chars. */
function brief(text) {
  const line = text.split("\n")[0];
  return line.length > 140 ? `${line.slice(0, 139)}…` : line;
}

async function replay(service, id) {
  const base = PARKED.get(service);
  const path = id ? `${base}/${encodeURIComponent(id)}/replay` : `${base}/replay`;
  try {
    const outcome = await api(path, { method: "POST" });
    say($("dlq-status"), `Replayed ${outcome.replayed.length} message(s) of ${service}` +
      (outcome.skipped.length ? `; left parked: ${outcome.skipped.length}` : "."));
    await loadDeadLetters();
  } catch (error) {
    say($("dlq-status"), `Not replayed: ${error.message}`, true);
  }
}

// --- Metrics ---------------------------------------------------------------------------------

const seconds = (v) => (v < 1 ? `${Math.round(v * 1000)} ms` : `${v.toFixed(2)} s`);

function makeCharts() {
  const box = $("charts");
  return {
    orders: new LineChart(box, "Orders per status"),
    duration: new LineChart(box, "Saga duration (accepted → end)", seconds),
    outbox: new LineChart(box, "Outbox depth (committed, not yet published)"),
    lag: new LineChart(box, "Consumer lag (messages waiting)"),
    dead: new LineChart(box, "Dead letters (parked)"),
  };
}

async function sampleMetrics() {
  charts = charts || makeCharts();
  const scraped = {};
  await Promise.all(SAGA_SERVICES.map(async (service) => {
    try {
      scraped[service] = parse(await api(`/api/v1/ops/${service}/metrics`, { raw: true }));
    } catch {
      // a service that does not answer leaves a gap in its series
    }
  }));
  if (scraped.order) {
    charts.orders.add(byLabel(scraped.order, "saga_orders", "status"));
    const p50 = quantile(scraped.order, "saga_duration_seconds", 0.5);
    const p99 = quantile(scraped.order, "saga_duration_seconds", 0.99);
    charts.duration.add({ ...(p50 === null ? {} : { p50 }), ...(p99 === null ? {} : { p99 }) });
  }
  const per = (name) => Object.fromEntries(Object.entries(scraped)
    .map(([service, samples]) => [service, sum(samples, name)]));
  charts.outbox.add(per("saga_outbox_backlog"));
  charts.lag.add(per("saga_consumer_lag"));
  charts.dead.add(per("saga_dead_letters"));
}

// --- Fault switches (payment, kitchen, order relay) -------------------------------------------------

// Each form counts the operator's edits and changes: a load that began before one must not show
// its answer over them (the first load, one form after another, is still on its way
// when a quick operator, or a test, sets a switch).
const faultChanges = new WeakMap();

const changesOf = (form) => faultChanges.get(form) || 0;

function changedByOperator(form) {
  faultChanges.set(form, changesOf(form) + 1);
}

async function loadFaults() {
  const forms = [...document.querySelectorAll("form[data-path]")];
  const before = new Map(forms.map((form) => [form, changesOf(form)]));
  for (const form of forms) {
    const status = form.querySelector(".status");
    const changes = before.get(form);
    if (changesOf(form) !== changes) continue;  // changed since this load began
    try {
      const current = await api(form.dataset.path);
      if (changesOf(form) !== changes) continue;  // changed meanwhile: keep that
      for (const [name, value] of Object.entries(current)) {
        const input = form.elements[name];
        if (!input || input === document.activeElement) continue;
        if (input.type === "checkbox") input.checked = Boolean(value);
        else input.value = value;
      }
      say(status, current.changed_by
        ? `Last changed by ${current.changed_by} at ${new Date(current.changed_at).toLocaleTimeString()}`
        : "Never changed: off");
    } catch (error) {
      if (changesOf(form) === changes) unavailable(form, status, error);
    }
  }
}

function unavailable(form, status, error) {
  if (error instanceof ApiError && error.status === 404) {
    say(status, `Not available: ${form.dataset.path} answered 404 (this build has no fault switches there).`, true);
  } else {
    say(status, `Could not read the switches: ${error.message}`, true);
  }
}

async function onSetFaults(event) {
  event.preventDefault();
  const form = event.target;
  const status = form.querySelector(".status");
  const body = Object.fromEntries([...form.querySelectorAll("input")]
    .map((input) => [input.name, input.type === "checkbox" ? input.checked : Number(input.value)]));
  changedByOperator(form);
  try {
    const now = await api(form.dataset.path, { method: "PUT", body });
    // The answer is the switches as stored, with who changed them: show that, not what was sent.
    say(status, `Set by ${now.changed_by} at ${new Date(now.changed_at).toLocaleTimeString()}: ` +
      Object.keys(body).map((name) => `${name} ${now[name]}`).join(", "));
  } catch (error) {
    if (error instanceof ApiError && error.status === 422) {
      say(status, `Refused: ${error.message}`, true);
    } else {
      unavailable(form, status, error);
    }
  }
}

// --- Wiring ----------------------------------------------------------------------------------

$("login").addEventListener("submit", onLogIn);
$("logout").addEventListener("click", () => {
  logOut();
  showConsole();
});
window.addEventListener("saga:logged-out", showConsole);
$("line-toggle").addEventListener("click", onToggleLine);
$("dlq-refresh").addEventListener("click", loadDeadLetters);
$("order-filter").addEventListener("change", loadOrders);
for (const form of document.querySelectorAll("form[data-path]")) {
  form.addEventListener("submit", onSetFaults);
  // What the operator edits is theirs: a load still on its way leaves the form alone.
  form.addEventListener("input", () => changedByOperator(form));
}
showConsole();
