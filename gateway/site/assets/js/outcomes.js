// What an order's status means to the person who placed it, in words.

export const TERMINAL = new Set(["finished", "cancelled", "refunded"]);

const STEPS = {
  pending_payment: "Accepted. Waiting for the payment service to charge the card…",
  paid: "Paid. Sending it to the kitchen…",
  received: "In the kitchen's queue, ingredients reserved. You may still cancel.",
  in_production: "A cook is making it now (too late to cancel).",
  cancelling: "Cancelling: waiting for the payment service to refund or void the charge…",
  finished: "Finished: the kitchen handed it over. Enjoy!",
};

/** One sentence on where the order is, and for an end other than `finished`, why. */
export function describe(order) {
  const reason = order.cancellation_reason;
  if (order.status === "cancelled") {
    return reason && /declin|insufficient|card/.test(reason)
      ? `Cancelled: the card was declined (${reason}). Nothing was charged.`
      : `Cancelled${reason ? `: ${reason}` : ""}. Nothing was charged.`;
  }
  if (order.status === "refunded") {
    return `Refunded: the card was charged, then the charge was refunded because ${reason || "the order was cancelled"}.`;
  }
  return STEPS[order.status] || order.status;
}
