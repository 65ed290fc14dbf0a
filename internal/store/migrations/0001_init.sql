-- Sharespot schema, version 1. Portable SQL: the same file runs on SQLite
-- and PostgreSQL (BLOB is read as BYTEA there). Never edit after release.

CREATE TABLE accounts (
    id         TEXT PRIMARY KEY,
    created_ms BIGINT NOT NULL
);

CREATE TABLE devices (
    id         TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts (id),
    public_key BLOB NOT NULL UNIQUE,
    name       TEXT NOT NULL,
    -- Relay: the next inbox sequence number and the highest acknowledged.
    next_seq   BIGINT NOT NULL DEFAULT 1,
    acked_seq  BIGINT NOT NULL DEFAULT 0,
    created_ms BIGINT NOT NULL
);
CREATE INDEX devices_account ON devices (account_id);

CREATE TABLE challenges (
    nonce      BLOB PRIMARY KEY,
    public_key BLOB NOT NULL,
    expires_ms BIGINT NOT NULL
);
CREATE INDEX challenges_expiry ON challenges (expires_ms);

-- Bearer tokens, stored as SHA-256 hashes only.
CREATE TABLE tokens (
    hash       BLOB PRIMARY KEY,
    device_id  TEXT NOT NULL REFERENCES devices (id),
    expires_ms BIGINT NOT NULL
);
CREATE INDEX tokens_expiry ON tokens (expires_ms);

-- Network-sharing instructions.
CREATE TABLE hotspots (
    id                 TEXT PRIMARY KEY,
    host_device_id     TEXT NOT NULL REFERENCES devices (id),
    bssid              TEXT NOT NULL,
    ssid               BLOB NOT NULL,
    security           INTEGER NOT NULL,
    currency           TEXT NOT NULL,
    price_minor        BIGINT NOT NULL,
    unit_bytes         BIGINT NOT NULL,
    min_purchase_bytes BIGINT NOT NULL,
    topup_price_minor  BIGINT NOT NULL,
    shareable_bytes    BIGINT NOT NULL,
    warn_at_bytes      BIGINT NOT NULL,
    -- Bytes promised to sessions or used: never above shareable_bytes.
    committed_bytes    BIGINT NOT NULL DEFAULT 0 CHECK (committed_bytes >= 0),
    active             INTEGER NOT NULL,
    created_ms         BIGINT NOT NULL,
    updated_ms         BIGINT NOT NULL
);
-- A BSSID belongs to at most one active hotspot; discovery looks up here.
CREATE UNIQUE INDEX hotspots_active_bssid ON hotspots (bssid) WHERE active = 1;
CREATE INDEX hotspots_host ON hotspots (host_device_id);

CREATE TABLE sessions (
    id                  TEXT PRIMARY KEY,
    hotspot_id          TEXT NOT NULL REFERENCES hotspots (id),
    host_device_id      TEXT NOT NULL REFERENCES devices (id),
    guest_device_id     TEXT NOT NULL REFERENCES devices (id),
    state               INTEGER NOT NULL,
    requested_bytes     BIGINT NOT NULL,
    -- Part of the hotspot's committed_bytes held by this session.
    reserved_bytes      BIGINT NOT NULL DEFAULT 0,
    granted_bytes       BIGINT NOT NULL DEFAULT 0,
    used_bytes          BIGINT NOT NULL DEFAULT 0,
    pending_topup_bytes BIGINT NOT NULL DEFAULT 0,
    currency            TEXT NOT NULL,
    suite               TEXT NOT NULL DEFAULT '',
    guest_keys          BLOB NOT NULL,
    deadline_ms         BIGINT NOT NULL DEFAULT 0,
    end_reason          TEXT NOT NULL DEFAULT '',
    settled_host_minor  BIGINT NOT NULL DEFAULT 0,
    settled_fee_minor   BIGINT NOT NULL DEFAULT 0,
    refunded_minor      BIGINT NOT NULL DEFAULT 0,
    created_ms          BIGINT NOT NULL,
    updated_ms          BIGINT NOT NULL
);
CREATE INDEX sessions_deadline ON sessions (deadline_ms) WHERE deadline_ms > 0;
CREATE INDEX sessions_host ON sessions (host_device_id, state);
CREATE INDEX sessions_guest ON sessions (guest_device_id, state);
CREATE INDEX sessions_hotspot ON sessions (hotspot_id, state);

-- Fee information (initial) and additional-fee information (top-up).
CREATE TABLE quotes (
    id           TEXT PRIMARY KEY,
    session_id   TEXT NOT NULL REFERENCES sessions (id),
    kind         INTEGER NOT NULL,
    bytes        BIGINT NOT NULL CHECK (bytes > 0),
    amount_minor BIGINT NOT NULL CHECK (amount_minor >= 0),
    currency     TEXT NOT NULL,
    state        INTEGER NOT NULL,
    expires_ms   BIGINT NOT NULL,
    created_ms   BIGINT NOT NULL
);
CREATE INDEX quotes_session ON quotes (session_id);

-- Signed payment-success responses; one per quote, ever.
CREATE TABLE receipts (
    id         TEXT PRIMARY KEY,
    quote_id   TEXT NOT NULL UNIQUE REFERENCES quotes (id),
    key_id     TEXT NOT NULL,
    payload    BLOB NOT NULL,
    signature  BLOB NOT NULL,
    confirmed  INTEGER NOT NULL DEFAULT 0,
    created_ms BIGINT NOT NULL
);

-- The payment platform's receipt-signing keys.
CREATE TABLE platform_keys (
    id          TEXT PRIMARY KEY,
    private_key BLOB NOT NULL,
    created_ms  BIGINT NOT NULL
);

-- Double-entry ledger. Only funding accounts (money from outside) may be
-- negative; the sum of all balances is zero.
CREATE TABLE ledger_accounts (
    id       TEXT PRIMARY KEY,
    kind     TEXT NOT NULL,
    owner    TEXT NOT NULL,
    currency TEXT NOT NULL,
    balance  BIGINT NOT NULL DEFAULT 0,
    CHECK (balance >= 0 OR kind = 'funding')
);

CREATE TABLE ledger_transfers (
    id         TEXT PRIMARY KEY,
    debit      TEXT NOT NULL REFERENCES ledger_accounts (id),
    credit     TEXT NOT NULL REFERENCES ledger_accounts (id),
    amount     BIGINT NOT NULL CHECK (amount > 0),
    currency   TEXT NOT NULL,
    memo       TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE INDEX ledger_transfers_debit ON ledger_transfers (debit, created_ms);
CREATE INDEX ledger_transfers_credit ON ledger_transfers (credit, created_ms);

-- Relay: store-and-forward inboxes, written in the same transaction as the
-- session change that caused each message.
CREATE TABLE inbox (
    device_id  TEXT NOT NULL,
    seq        BIGINT NOT NULL,
    message_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    body       BLOB NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (device_id, seq)
);
