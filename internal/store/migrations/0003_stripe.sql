-- Card payments through Stripe (issue 13). Never edit after release.

-- One Stripe PaymentIntent per paid quote (kind 'quote', id = the quote's
-- ID) or per wallet funding by card (kind 'fund', id = the client's
-- request ID). The row is written before Stripe is called, so a webhook
-- that arrives before the call returns finds it (by the intent's metadata).
CREATE TABLE card_intents (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    intent_id TEXT NOT NULL DEFAULT '',
    session_id TEXT NOT NULL DEFAULT '',
    device_id TEXT NOT NULL,
    account_id TEXT NOT NULL,
    amount_minor BIGINT NOT NULL,
    currency TEXT NOT NULL,
    status TEXT NOT NULL,
    action_url TEXT NOT NULL DEFAULT '',
    failure TEXT NOT NULL DEFAULT '',
    -- what charge.refunded and charge.dispute.created moved, so far
    refunded_minor BIGINT NOT NULL DEFAULT 0,
    disputed_minor BIGINT NOT NULL DEFAULT 0,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
CREATE INDEX card_intents_intent ON card_intents (intent_id);

-- The outbox of Stripe calls settlement decided: written in the
-- settlement's transaction, performed after its commit with the row's ID
-- as the idempotency key, retried until done.
CREATE TABLE stripe_ops (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    session_id TEXT NOT NULL,
    target TEXT NOT NULL,
    amount_minor BIGINT NOT NULL,
    currency TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_ms BIGINT NOT NULL DEFAULT 0,
    result TEXT NOT NULL DEFAULT '',
    created_ms BIGINT NOT NULL
);
CREATE INDEX stripe_ops_pending ON stripe_ops (state, next_ms);

-- Webhook events applied, each stored in the transaction of its effect.
CREATE TABLE stripe_events (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    received_ms BIGINT NOT NULL
);

-- A host account's Stripe Connect Express account, and whether Stripe
-- reports it able to receive transfers (account.updated).
CREATE TABLE payout_accounts (
    account_id TEXT PRIMARY KEY,
    stripe_account TEXT NOT NULL,
    ready INTEGER NOT NULL DEFAULT 0,
    created_ms BIGINT NOT NULL
);

-- After settlement: what Stripe refunded to the card and what the card
-- holder disputed.
ALTER TABLE sessions ADD COLUMN card_refunded_minor BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN disputed_minor BIGINT NOT NULL DEFAULT 0;
