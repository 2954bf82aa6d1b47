-- Rotation (POST /api/v1/orders/webhook-secret/rotate, order.webhooks.rotate): the secret it
-- replaces keeps signing, beside the new one, until previous_until, so a receiver can move to
-- the new secret without failing a delivery (Standard Webhooks: several signatures, space
-- separated, in one webhook-signature header; a receiver accepts any that it can verify).
ALTER TABLE webhook_secrets
    ADD COLUMN IF NOT EXISTS previous_secret text,
    ADD COLUMN IF NOT EXISTS previous_until  timestamptz;
