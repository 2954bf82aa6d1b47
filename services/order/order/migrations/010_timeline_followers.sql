-- NOTIFY only for an order someone follows live.
--
-- A NOTIFY is not free: at commit PostgreSQL takes a lock shared by the whole server to append
-- it to the notification queue, so every notifying commit queues behind the others, and it cost
-- 70-120 µs of CPU per transaction here, listened to or not (pgbench, docs/performance.md). Nearly
-- every saga step writes a timeline entry, nearly no order is followed: so the follower of an
-- order (order.stream_api) notes it here, until a time it keeps moving on while it follows, and
-- the trigger notifies only for an order noted (order.store.follow says why no entry falls
-- between a note and a step); a follower that left is forgotten once its time has passed.
--
-- UNLOGGED: followers are connections, which a database crash ends anyway (the table is then
-- emptied, and each stream notes its order again once its listener has reconnected).
CREATE UNLOGGED TABLE IF NOT EXISTS order_followers (
    order_id uuid        PRIMARY KEY,
    until    timestamptz NOT NULL
);

CREATE OR REPLACE FUNCTION order_timeline_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM order_followers WHERE order_id = NEW.order_id AND until > now()) THEN
        PERFORM pg_notify('order_timeline', NEW.order_id::text);
    END IF;
    RETURN NULL;
END $$;
