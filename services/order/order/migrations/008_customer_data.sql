-- Erasures asked for while the customer had an order in flight: erased once its saga ends
-- (order.customer_data.erase_pending).
CREATE TABLE IF NOT EXISTS pending_erasures (
    erasure_id   uuid        PRIMARY KEY,
    customer_id  text        NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now()
);
