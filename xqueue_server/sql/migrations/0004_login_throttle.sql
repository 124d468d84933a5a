-- 0004: failed-login throttling shared by every replica (policy: xqueue_server/ratelimit.py).
-- Failed password checks are counted in fixed windows per scope: 'pair' (username + client address),
-- 'address' and 'account' (the username as typed, so unknown names count too).
CREATE TABLE login_failures (
    scope         text NOT NULL CHECK (scope IN ('pair', 'address', 'account')),
    key           text NOT NULL,
    window_start  timestamptz NOT NULL,
    failures      integer NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX login_failures_window_idx ON login_failures (window_start);

-- Addresses an account recently logged in from with the right password: they keep working while
-- the account or the address as a whole is throttled.
CREATE TABLE login_known_addresses (
    account_id       bigint NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    address          text NOT NULL,
    last_success_at  timestamptz NOT NULL,
    PRIMARY KEY (account_id, address)
);
CREATE INDEX login_known_addresses_success_idx ON login_known_addresses (last_success_at);
