// The shop page: the menu, logging in or signing up, placing an order, and the order's timeline
// as the saga moves it, pushed by GET /api/v1/orders/{id}/events (sse.js), never polled.

import { api, h, logInCustomer, logOut, money, say, session, signUp } from "./api.js";
import { follow } from "./sse.js";
import { describe, TERMINAL } from "./outcomes.js";

const $ = (id) => document.getElementById(id);
let menu = [];
let watching = null; // the AbortController of the stream being followed

// --- Account -------------------------------------------------------------------------------

function showAccount() {
  const current = session();
  const customer = current && current.kind === "customer" ? current : null;
  $("login").hidden = !!customer;
  $("signup-box").hidden = !!customer;
  $("logged-in").hidden = !customer;
  $("account-title").textContent = customer ? "Account" : "Log in";
  $("customer-name").textContent = customer ? customer.name : "";
  $("who").textContent = customer ? `Logged in as ${customer.name}` :
    current ? `Operator ${current.name}: open the operator view` : "Not logged in";
  $("place").disabled = !customer;
  if (customer) loadHistory();
  else $("history").replaceChildren(h("li", {}, "Log in to see your orders."));
}

async function onLogIn(event) {
  event.preventDefault();
  const form = event.target;
  say($("account-status"), "Logging in…");
  try {
    await logInCustomer(form.email.value.trim(), form.password.value);
    form.reset();
    say($("account-status"), "Logged in.");
    showAccount();
  } catch (error) {
    say($("account-status"), `Could not log in: ${error.message}`, true);
  }
}

async function onSignUp(event) {
  event.preventDefault();
  const form = event.target;
  say($("account-status"), "Signing up…");
  try {
    await signUp(form.name.value.trim(), form.email.value.trim(), form.password.value);
    form.reset();
    say($("account-status"), "Welcome! You are logged in.");
    showAccount();
  } catch (error) {
    say($("account-status"), `Could not sign up: ${error.message}`, true);
  }
}

// --- Menu and placing an order ---------------------------------------------------------------

async function loadMenu() {
  try {
    menu = await api("/api/v1/products");
  } catch (error) {
    $("menu").replaceChildren(h("tr", {}, h("td", { colspan: 3 }, `No menu: ${error.message}`)));
    return;
  }
  $("menu").replaceChildren(...menu.map((product) => h("tr", {},
    h("th", { scope: "row" }, h("span", { class: "product" }, product.name),
      h("span", { class: "hint" }, product.description)),
    h("td", { class: "price" }, money(product.price, product.currency)),
    h("td", {}, h("input", { type: "number", min: 0, max: 20, value: 0, name: product.sku,
                             "aria-label": `Quantity of ${product.name}`, class: "qty" })))));
  updateTotal();
}

/** The chosen lines; the total is shown in cents so no float rounding creeps in. */
function chosenItems() {
  return [...document.querySelectorAll("#menu input.qty")]
    .map((input) => ({ sku: input.name, quantity: Number(input.value) }))
    .filter((item) => Number.isInteger(item.quantity) && item.quantity > 0);
}

function cents(price) {
  const [whole, fraction = ""] = price.split(".");
  return Number(whole) * 100 + Number((fraction + "00").slice(0, 2));
}

function updateTotal() {
  const bySku = Object.fromEntries(menu.map((p) => [p.sku, p]));
  const total = chosenItems().reduce((sum, i) => sum + cents(bySku[i.sku].price) * i.quantity, 0);
  const currency = menu.length ? menu[0].currency : "";
  $("total").textContent = `${Math.floor(total / 100)}.${String(total % 100).padStart(2, "0")} ${currency}`;
}

async function paymentToken(form) {
  const choice = form.pay.value;
  if (choice !== "card") return choice;
  say($("order-status"), "Tokenising the card…");
  const card = await api("/api/v1/payments/cards", { method: "POST", body: {
    number: form.number.value, exp_month: Number(form.exp_month.value),
    exp_year: Number(form.exp_year.value), cvc: form.cvc.value, holder: form.holder.value,
  } });
  return card.token;
}

async function onPlaceOrder(event) {
  event.preventDefault();
  const form = event.target;
  const items = chosenItems();
  if (!items.length) {
    say($("order-status"), "Choose at least one product (a quantity above 0).", true);
    return;
  }
  $("place").disabled = true;
  try {
    const token = await paymentToken(form);
    say($("order-status"), "Placing the order…");
    // One key per click: a retried request (a flaky network) is the same order, never two.
    const order = await api("/api/v1/orders", { method: "POST",
      headers: { "Idempotency-Key": crypto.randomUUID() },
      body: { items, payment_token: token } });
    say($("order-status"), "Order accepted: the saga has started.");
    show(order);
    loadHistory();
  } catch (error) {
    say($("order-status"), `Not placed: ${error.message}`, true);
  } finally {
    $("place").disabled = !session();
  }
}

// --- The order, live -------------------------------------------------------------------------

function timelineEntry(entry) {
  const at = new Date(entry.at);
  return h("li", { "data-status": entry.status },
    h("span", { class: "badge" }, entry.status), " ",
    h("time", { datetime: entry.at }, at.toLocaleTimeString()),
    entry.reason ? h("span", { class: "reason" }, ` — ${entry.reason}`) : null);
}

function setState(order) {
  $("current-state").textContent = order.status;
  $("current-state").dataset.status = order.status;
  $("outcome").textContent = describe(order);
  $("cancel").hidden = !["pending_payment", "paid", "received"].includes(order.status);
}

/** Show an order and, unless it has ended, follow its stream until it does. */
function show(order) {
  if (watching) watching.abort();
  $("current").hidden = false;
  $("current-id").textContent = order.id;
  $("timeline").replaceChildren();
  say($("cancel-status"), "");
  const state = { ...order, timeline: [] };
  setState(state);
  watching = new AbortController();
  follow(`/api/v1/orders/${order.id}/events`, {
    token: session().token,
    signal: watching.signal,
    finished: () => TERMINAL.has(state.status),
    onEvent(event) {
      if (event.type !== "status") return;
      const entry = JSON.parse(event.data);
      state.status = entry.status;
      if (entry.reason && entry.status !== "finished") state.cancellation_reason = entry.reason;
      state.timeline.push(entry);
      $("timeline").append(timelineEntry(entry));
      setState(state);
      if (TERMINAL.has(entry.status)) loadHistory();
    },
    onState(streamState) {
      $("stream-state").textContent = {
        connecting: "connecting…", live: "● live", reconnecting: "reconnecting…", ended: "",
      }[streamState];
    },
    onError(status) {
      $("stream-state").textContent = `the stream answered ${status}`;
    },
  });
  $("current").scrollIntoView({ block: "nearest" });
}

async function onCancel() {
  const id = $("current-id").textContent;
  say($("cancel-status"), "Asking to cancel…");
  try {
    const answer = await api(`/api/v1/orders/${id}/cancel`, { method: "POST" });
    say($("cancel-status"), answer.detail);
  } catch (error) {
    say($("cancel-status"), `Not cancelled: ${error.message}`, true);
  }
}

async function loadHistory() {
  try {
    const orders = await api("/api/v1/orders?limit=20");
    $("history").replaceChildren(...(orders.length ? orders.map((o) => h("li", {},
      h("button", { type: "button", class: "link", onclick: () => openOrder(o.id),
                    "aria-label": `Show order of ${new Date(o.created_at).toLocaleString()}, ${o.status}` },
        new Date(o.created_at).toLocaleString()), " ",
      h("span", { class: "badge", "data-status": o.status }, o.status), " ",
      money(o.total, o.currency))) : [h("li", {}, "No orders yet.")]));
  } catch (error) {
    $("history").replaceChildren(h("li", {}, `Could not load your orders: ${error.message}`));
  }
}

async function openOrder(id) {
  try {
    show(await api(`/api/v1/orders/${id}`));
  } catch (error) {
    say($("order-status"), error.message, true);
  }
}

// --- Wiring ----------------------------------------------------------------------------------

$("login").addEventListener("submit", onLogIn);
$("signup").addEventListener("submit", onSignUp);
$("logout").addEventListener("click", () => {
  if (watching) watching.abort();
  logOut();
  $("current").hidden = true;
  showAccount();
});
$("order-form").addEventListener("submit", onPlaceOrder);
$("order-form").addEventListener("input", updateTotal);
$("order-form").addEventListener("change", (event) => {
  if (event.target.name === "pay") $("card-fields").hidden = event.target.value !== "card";
});
$("cancel").addEventListener("click", onCancel);
window.addEventListener("saga:logged-out", showAccount);
showAccount();
loadMenu();
