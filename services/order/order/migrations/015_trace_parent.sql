-- The span that placed the order (its POST's), beside its trace id: a later request about the
-- order (the customer's cancel) continues the order's trace under that span, so that the order
-- stays one trace from its POST to its last event (order.service.cancel_order).
ALTER TABLE orders ADD COLUMN IF NOT EXISTS trace_span_id text;
