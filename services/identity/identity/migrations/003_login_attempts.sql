-- Failed log-ins per account (identity.throttle): after a few, each further attempt on that
-- account waits, whichever address it comes from. Keyed by a digest of what was typed as the
-- account (a customer's email, lower-cased, or a client id), whether such an account exists or
-- not, so a wait tells nobody which accounts exist, and no typed email is kept as it was typed.
CREATE TABLE IF NOT EXISTS login_attempts (
    account      text        PRIMARY KEY,           -- identity.throttle.account_key
    failures     integer     NOT NULL,              -- attempts since the last success
    last_at      timestamptz NOT NULL,              -- the latest attempt counted
    wait_until   timestamptz                        -- no attempt is checked before then
);
CREATE INDEX IF NOT EXISTS login_attempts_last_at ON login_attempts (last_at);
