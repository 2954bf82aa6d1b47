-- Whether the order's trace was recorded (sagakit.sampling: every order at a person's pace, a
-- few a second under load). Every order has a trace id either way; only a recorded one is in
-- Jaeger, so the API and the operator view say which. Orders placed before sampling: recorded.
ALTER TABLE orders ADD COLUMN IF NOT EXISTS trace_recorded boolean NOT NULL DEFAULT true;
