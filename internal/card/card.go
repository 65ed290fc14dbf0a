// Package card is the card payment platform: Stripe beside the built-in
// wallet, through the same signed receipts and the same claimed flow.
//
// Paying a quote by card (C3.2 / C1.13) creates a PaymentIntent with manual
// capture for the quote's amount, idempotency key from the quote. Once
// Stripe reports the amount authorised (requires_capture), from the
// confirmation's result, a later look (the guest calls Pay again) or the
// webhook, whichever comes first, the session engine's Pay moves the money
// from the guest's card account into escrow and the wallet's key signs the
// payment-success receipt; the receipt is made once, because the quote is
// paid once. Settlement (session.finish) decides the capture of the billed
// part, the release of the rest and the host's transfer; Settler, the
// session.Cards this package gives the engine, queues them in an outbox
// (stripe_ops) in the settlement's transaction; Run performs them after the
// commit, with the op's ID as the idempotency key, and retries until done.
// This package alone writes its tables (card_intents, stripe_ops,
// stripe_events, payout_accounts); a refund or dispute reaches the session
// through the engine (RecordCardRefund, RecordDispute).
//
// Funding the wallet by card is a PaymentIntent with automatic capture,
// credited when the webhook reports payment_intent.succeeded. Webhooks are
// verified (Stripe-Signature, 5-minute tolerance) and each event is stored
// in the transaction of its effect, so it applies once.
package card

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/stripe/stripe-go/v85"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/payment"
	"github.com/sharespot/sharespot/internal/problem"
	"github.com/sharespot/sharespot/internal/session"
	"github.com/sharespot/sharespot/internal/store"
)

// Config configures the card platform.
type Config struct {
	// Key is the Stripe secret key (sk_live_…, sk_test_…, or rk_…).
	Key string
	// WebhookSecret is the webhook endpoint's signing secret (whsec_…).
	WebhookSecret string
	// APIBase replaces https://api.stripe.com (a test server such as
	// stripe-mock).
	APIBase string
	// ReturnURL is where Stripe sends a card holder after 3-D Secure.
	ReturnURL string
	// HTTPClient, if set, carries the calls to Stripe.
	HTTPClient *http.Client
	// AfterCall, if set, runs after each successful outbox call to Stripe
	// and before it is recorded as done (crash-safety tests kill the
	// process here).
	AfterCall func(kind string)
	// BeforeCall, if set, runs before each outbox call to Stripe (the
	// crash-safety tests kill the process here, after the op was
	// committed and before Stripe heard of it).
	BeforeCall func(kind string)
}

// TestPaymentMethod stands in for a card with a test-mode key: Stripe's
// test Visa.
const TestPaymentMethod = "pm_card_visa"

// Card is the Stripe payment platform.
type Card struct {
	sc     *stripe.Client
	cfg    Config
	st     *store.Store
	engine *session.Engine
	wallet *payment.Wallet
	now    func() time.Time
	log    *slog.Logger
	wake   chan struct{}
	// mismatched: the payments whose PaymentIntent Stripe reported
	// differing from the one asked for, said once each.
	mismatched sync.Map
}

// New returns the card platform.
func New(cfg Config, st *store.Store, engine *session.Engine, wallet *payment.Wallet, now func() time.Time, log *slog.Logger) (*Card, error) {
	if cfg.Key == "" {
		return nil, errors.New("card: no Stripe secret key")
	}
	if cfg.WebhookSecret == "" {
		return nil, errors.New("card: no webhook signing secret: give --stripe-webhook-secret (whsec_… from the webhook endpoint in Stripe's dashboard)")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	bc := &stripe.BackendConfig{
		LeveledLogger:     &stripe.LeveledLogger{Level: stripe.LevelNull},
		MaxNetworkRetries: stripe.Int64(2),
		HTTPClient:        cfg.HTTPClient,
	}
	if cfg.APIBase != "" {
		bc.URL = stripe.String(strings.TrimRight(cfg.APIBase, "/"))
	}
	sc := stripe.NewClient(cfg.Key, stripe.WithBackends(stripe.NewBackendsWithConfig(bc)))
	return &Card{sc: sc, cfg: cfg, st: st, engine: engine, wallet: wallet, now: now, log: log, wake: make(chan struct{}, 1)}, nil
}

// TestMode reports whether the key is a test-mode key.
func (c *Card) TestMode() bool { return strings.Contains(c.cfg.Key, "_test_") }

// Wake makes Run look at the outbox now.
func (c *Card) Wake() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *Card) nowMS() int64 { return c.now().UnixMilli() }

// paymentMethod picks the card to charge: the one the client created
// (Stripe.js or a mobile SDK, so card numbers never reach the server), or
// in test mode Stripe's test Visa.
func (c *Card) paymentMethod(pm string) (string, error) {
	switch {
	case pm != "":
		if !strings.HasPrefix(pm, "pm_") || len(pm) > 255 {
			return "", problem.Invalidf("payment_method %q is not a Stripe PaymentMethod ID (pm_…)", pm)
		}
		return pm, nil
	case c.TestMode():
		return TestPaymentMethod, nil
	default:
		return "", problem.Invalidf("payment_method is missing: create one on the device with Stripe (the server never takes card numbers)")
	}
}

// intent is a card_intents row.
type intent struct {
	ID, Kind, IntentID, SessionID string
	DeviceID, AccountID           string
	Amount                        int64
	Currency, Status              string
	ActionURL, Failure            string
	Refunded, Disputed            int64
}

// Statuses of a card intent besides settlement's (authorised, capturing,
// releasing: settle.go).
const (
	statusCreating       = "creating"        // recorded; Stripe not yet answered
	statusPending        = "pending"         // Stripe is working or waits for the card holder
	statusRequiresAction = "requires_action" // 3-D Secure at ActionURL
	statusFailed         = "failed"          // declined or cancelled: nothing held
	statusCredited       = "credited"        // a wallet funding, credited
	statusCaptured       = "captured"        // settled: billed part captured
	statusReleased       = "released"        // settled: nothing captured, hold cancelled
)

const intentCols = `id, kind, intent_id, session_id, device_id, account_id, amount_minor, currency, status, action_url, failure, refunded_minor, disputed_minor`

func scanIntent(r interface{ Scan(...any) error }) (*intent, error) {
	in := new(intent)
	err := r.Scan(&in.ID, &in.Kind, &in.IntentID, &in.SessionID, &in.DeviceID, &in.AccountID, &in.Amount, &in.Currency, &in.Status,
		&in.ActionURL, &in.Failure, &in.Refunded, &in.Disputed)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	return in, err
}

func loadIntent(tx *store.Tx, id string) (*intent, error) {
	in, err := scanIntent(tx.QueryRow(`SELECT `+intentCols+` FROM card_intents WHERE id = ?`+tx.ForUpdate(), id))
	if err != nil {
		return nil, fmt.Errorf("card: payment %s: %w", id, err)
	}
	return in, nil
}

func intentByStripeID(tx *store.Tx, pi string) (*intent, error) {
	if pi == "" {
		return nil, nil
	}
	in, err := scanIntent(tx.QueryRow(`SELECT `+intentCols+` FROM card_intents WHERE intent_id = ?`+tx.ForUpdate(), pi))
	if err != nil {
		return nil, fmt.Errorf("card: payment of %s: %w", pi, err)
	}
	return in, nil
}

func (in *intent) save(tx *store.Tx, nowMS int64) error {
	_, err := tx.Exec(`UPDATE card_intents SET intent_id = ?, status = ?, action_url = ?, failure = ?, refunded_minor = ?, disputed_minor = ?, updated_ms = ? WHERE id = ?`,
		in.IntentID, in.Status, in.ActionURL, in.Failure, in.Refunded, in.Disputed, nowMS, in.ID)
	if err != nil {
		return fmt.Errorf("card: save payment %s: %w", in.ID, err)
	}
	return nil
}

// metadataKey, in a PaymentIntent's metadata, names the card_intents row,
// so that a webhook arriving before the create call returned finds it.
const metadataKey = "sharespot_payment"

// stripeErr turns an error of a Stripe call into one for the caller: a
// declined card or a refused request says why; anything else is
// unavailable (try again).
func stripeErr(what string, err error) error {
	var se *stripe.Error
	if errors.As(err, &se) && se.HTTPStatusCode >= 400 && se.HTTPStatusCode < 500 && se.HTTPStatusCode != 409 && se.HTTPStatusCode != 429 {
		return problem.Deniedf("%s: Stripe refused: %s", what, se.Msg)
	}
	return fmt.Errorf("card: %s: %w", what, err)
}

// permanent reports whether a Stripe error will not go away by retrying.
func permanent(err error) bool {
	var se *stripe.Error
	return errors.As(err, &se) && se.HTTPStatusCode >= 400 && se.HTTPStatusCode < 500 && se.HTTPStatusCode != 409 && se.HTTPStatusCode != 429
}

// actionURL is where a PaymentIntent that requires action sends the card
// holder.
func actionURL(pi *stripe.PaymentIntent) string {
	if na := pi.NextAction; na != nil && na.RedirectToURL != nil {
		return na.RedirectToURL.URL
	}
	return ""
}

// payStatus renders an intent for PayResponse / FundByCardResponse.
func payStatus(in *intent) sharespotv1.PayStatus {
	switch in.Status {
	case statusAuthorised, statusCapturing, statusReleasing, statusCaptured, statusReleased, statusCredited:
		return sharespotv1.PayStatus_PAY_STATUS_PAID
	case statusRequiresAction:
		return sharespotv1.PayStatus_PAY_STATUS_REQUIRES_ACTION
	case statusFailed:
		return sharespotv1.PayStatus_PAY_STATUS_FAILED
	}
	return sharespotv1.PayStatus_PAY_STATUS_PENDING
}
