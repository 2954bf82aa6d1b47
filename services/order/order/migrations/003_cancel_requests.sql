-- When the customer asked to cancel a paid order: the kitchen answers, and until it does a
-- second cancel is refused rather than asked again.
ALTER TABLE orders ADD COLUMN IF NOT EXISTS cancel_requested_at timestamptz;
