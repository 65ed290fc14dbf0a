package card

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"connectrpc.com/connect"
	"github.com/stripe/stripe-go/v85"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/ledger"
	"github.com/sharespot/sharespot/internal/problem"
	"github.com/sharespot/sharespot/internal/session"
	"github.com/sharespot/sharespot/internal/store"
)

// Pay is C3.2 / C1.13 by card. The first call creates the quote's
// PaymentIntent (manual capture, idempotency key from the quote); later
// calls look at it again. The answer carries the receipt once Stripe
// reported the amount authorised, or says what the guest waits for (3-D
// Secure at action_url, or Stripe).
func (c *Card) Pay(ctx context.Context, guest session.Party, quoteID, pm string) (*sharespotv1.PayResponse, error) {
	in, err := store.ReadT(ctx, c.st, func(tx *store.Tx) (*intent, error) { return loadIntent(tx, quoteID) })
	if err != nil {
		return nil, err
	}
	if in == nil {
		if pm, err = c.paymentMethod(pm); err != nil {
			return nil, err
		}
		sc, err := store.ReadT(ctx, c.st, func(tx *store.Tx) (session.SignedCharge, error) {
			return c.engine.SignChargeBy(tx, guest, quoteID, session.MethodCard)
		})
		if err != nil {
			return nil, err
		}
		ch := sc.Charge()
		if err := c.st.Write(ctx, func(tx *store.Tx) error {
			now := c.nowMS()
			_, err := tx.Exec(`INSERT INTO card_intents (id, kind, session_id, device_id, account_id, amount_minor, currency, status, created_ms, updated_ms)
				VALUES (?, 'quote', ?, ?, ?, ?, ?, ?, ?, ?)`, quoteID, ch.SessionID, guest.DeviceID, guest.AccountID, ch.Amount, ch.Currency, statusCreating, now, now)
			if errors.Is(err, store.ErrConflict) {
				return nil // a concurrent call recorded it
			}
			return err
		}); err != nil {
			return nil, fmt.Errorf("card: record payment of %s: %w", quoteID, err)
		}
		if in, err = store.ReadT(ctx, c.st, func(tx *store.Tx) (*intent, error) { return loadIntent(tx, quoteID) }); err != nil {
			return nil, err
		}
	}
	if in.DeviceID != guest.DeviceID || in.Kind != "quote" {
		return nil, problem.NotFoundf("quote %s not found", quoteID)
	}
	if waiting(in.Status) {
		pi, err := c.lookUp(ctx, in, pm, func() (*stripe.PaymentIntent, error) {
			// Also when a crash cut off the first create: the same
			// idempotency key gets the same PaymentIntent.
			pm, err := c.paymentMethod(pm)
			if err != nil {
				return nil, err
			}
			p := &stripe.PaymentIntentCreateParams{
				Amount: stripe.Int64(in.Amount), Currency: stripe.String(strings.ToLower(in.Currency)),
				CaptureMethod: stripe.String(string(stripe.PaymentIntentCaptureMethodManual)), Confirm: stripe.Bool(true),
				PaymentMethod: stripe.String(pm), PaymentMethodTypes: stripe.StringSlice([]string{"card"}),
				TransferGroup: stripe.String(in.SessionID), Description: stripe.String("Sharespot data, session " + in.SessionID),
			}
			if c.cfg.ReturnURL != "" {
				p.ReturnURL = stripe.String(c.cfg.ReturnURL)
			}
			p.AddMetadata(metadataKey, in.ID)
			p.AddMetadata("session_id", in.SessionID)
			p.SetIdempotencyKey("sharespot-pay-" + in.ID)
			return c.sc.V1PaymentIntents.Create(ctx, p)
		})
		if err != nil {
			return nil, err
		}
		if pi != nil {
			if err := c.applyIntent(ctx, in.ID, pi, nil, false); err != nil {
				return nil, err
			}
		}
		if in, err = store.ReadT(ctx, c.st, func(tx *store.Tx) (*intent, error) { return loadIntent(tx, quoteID) }); err != nil {
			return nil, err
		}
	}
	out := &sharespotv1.PayResponse{Status: payStatus(in), IntentId: in.IntentID, ActionUrl: in.ActionURL, Failure: in.Failure}
	switch out.Status {
	case sharespotv1.PayStatus_PAY_STATUS_PAID:
		if out.Receipt, err = store.ReadT(ctx, c.st, func(tx *store.Tx) (*sharespotv1.Receipt, error) { return c.wallet.Stored(tx, quoteID) }); err != nil {
			return nil, err
		}
		if out.Receipt == nil {
			return nil, fmt.Errorf("card: quote %s is authorised but has no receipt", quoteID)
		}
	case sharespotv1.PayStatus_PAY_STATUS_FAILED:
		if in.Failure == "" {
			out.Failure = "the card payment failed"
		}
	}
	return out, nil
}

// waiting reports whether a card intent still waits for Stripe.
func waiting(status string) bool {
	return status == statusCreating || status == statusPending || status == statusRequiresAction
}

// lookUp creates the intent's PaymentIntent (create) the first time and
// retrieves it later. A permanent refusal (a declined card) is recorded
// as the failure and returns nil.
func (c *Card) lookUp(ctx context.Context, in *intent, pm string, create func() (*stripe.PaymentIntent, error)) (*stripe.PaymentIntent, error) {
	var pi *stripe.PaymentIntent
	var err error
	if in.IntentID == "" {
		pi, err = create()
	} else {
		pi, err = c.sc.V1PaymentIntents.Retrieve(ctx, in.IntentID, nil)
	}
	if err == nil {
		return pi, nil
	}
	if problem.KindOf(err) != 0 {
		return nil, err // refused before Stripe was asked
	}
	if !permanent(err) {
		return nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("Stripe cannot be reached now (%v); try again", err))
	}
	var se *stripe.Error
	errors.As(err, &se)
	return nil, c.st.Write(ctx, func(tx *store.Tx) error {
		cur, err := loadIntent(tx, in.ID)
		if err != nil || cur == nil || !waiting(cur.Status) {
			return err
		}
		cur.Status, cur.Failure = statusFailed, "Stripe refused the payment: "+se.Msg
		return cur.save(tx, c.nowMS())
	})
}

// errDuplicate: the webhook event was applied before.
var errDuplicate = errors.New("card: event already applied")

// write runs fn in a transaction that also stores the webhook event ev (if
// any): the event applies once, with its effect.
func (c *Card) write(ctx context.Context, ev *stripe.Event, fn func(tx *store.Tx) error) error {
	err := c.st.Write(ctx, func(tx *store.Tx) error {
		if ev != nil {
			_, err := tx.Exec(`INSERT INTO stripe_events (id, type, received_ms) VALUES (?, ?, ?)`, ev.ID, string(ev.Type), c.nowMS())
			if errors.Is(err, store.ErrConflict) {
				return errDuplicate
			}
			if err != nil {
				return fmt.Errorf("card: record event %s: %w", ev.ID, err)
			}
		}
		return fn(tx)
	})
	if errors.Is(err, errDuplicate) {
		return nil
	}
	return err
}

// applyIntent takes what Stripe says of a PaymentIntent (a create or
// retrieve result, or a webhook's object) into the card intent rowID.
// failed: the webhook said payment_failed or canceled.
func (c *Card) applyIntent(ctx context.Context, rowID string, pi *stripe.PaymentIntent, ev *stripe.Event, failed bool) error {
	in, err := store.ReadT(ctx, c.st, func(tx *store.Tx) (*intent, error) { return loadIntent(tx, rowID) })
	if err != nil || in == nil {
		return err
	}
	if !strings.EqualFold(string(pi.Currency), in.Currency) || pi.Amount != in.Amount {
		// Said once per payment: a client asking again (every second,
		// while it waits) would repeat it for ever.
		if _, said := c.mismatched.LoadOrStore(in.ID+"/"+pi.ID, true); !said {
			hint := ""
			if c.cfg.APIBase != "" {
				hint = "stripe-mock answers every retrieval with the same fixture and sends no webhooks: confirm test payments with `sharespot server stripe-test-events`"
			}
			c.log.Error("card: Stripe reports a payment that differs from the one asked for", "payment", in.ID, "intent", pi.ID,
				"amount", pi.Amount, "currency", pi.Currency, "want_amount", in.Amount, "want_currency", in.Currency, "hint", hint)
		}
		return c.write(ctx, ev, func(tx *store.Tx) error { return nil })
	}
	switch {
	case in.Kind == "quote" && pi.Status == stripe.PaymentIntentStatusRequiresCapture && !failed:
		return c.authorise(ctx, in, pi, ev)
	case in.Kind == "fund" && pi.Status == stripe.PaymentIntentStatusSucceeded && ev != nil && !failed:
		return c.credit(ctx, in, pi, ev)
	}
	return c.write(ctx, ev, func(tx *store.Tx) error {
		cur, err := loadIntent(tx, rowID)
		if err != nil {
			return err
		}
		if cur.IntentID == "" {
			cur.IntentID = pi.ID
		}
		if !waiting(cur.Status) {
			return nil // settled, failed or paid: a late or stale report changes nothing
		}
		switch {
		case failed || pi.Status == stripe.PaymentIntentStatusCanceled:
			cur.Status, cur.Failure = statusFailed, "the card payment failed or was cancelled"
			if e := pi.LastPaymentError; e != nil && e.Msg != "" {
				cur.Failure = "the card payment failed: " + e.Msg
			}
		case pi.Status == stripe.PaymentIntentStatusRequiresAction:
			cur.Status, cur.ActionURL = statusRequiresAction, actionURL(pi)
		case cur.Status == statusRequiresAction && pi.Status != stripe.PaymentIntentStatusProcessing && pi.Status != stripe.PaymentIntentStatusSucceeded:
			// Still waiting for the card holder: keep showing the URL
			// (a failed authentication is reported as payment_failed).
		default: // processing, requires_confirmation, requires_payment_method, or succeeded before the webhook
			cur.Status = statusPending
		}
		return cur.save(tx, c.nowMS())
	})
}

// authorise pays the quote once Stripe holds its amount on the card: the
// session engine's Pay (reservation, card → escrow, signed receipt). If the
// quote can no longer be paid (expired, session ended) the hold is
// released instead.
func (c *Card) authorise(ctx context.Context, in *intent, pi *stripe.PaymentIntent, ev *stripe.Event) error {
	if pi.AmountCapturable < in.Amount {
		return c.release(ctx, in, pi.ID, ev, fmt.Sprintf("Stripe authorised %d of the %d asked", pi.AmountCapturable, in.Amount))
	}
	guest := session.Party{DeviceID: in.DeviceID, AccountID: in.AccountID}
	sc, err := store.ReadT(ctx, c.st, func(tx *store.Tx) (session.SignedCharge, error) {
		return c.engine.SignChargeBy(tx, guest, in.ID, session.MethodCard)
	})
	switch kind := problem.KindOf(err); {
	case err == nil:
	case kind == problem.AlreadyExists:
		// Paid already (by this intent, through another report).
		return c.write(ctx, ev, func(tx *store.Tx) error { return nil })
	case kind == problem.WrongState || kind == problem.NotFound:
		return c.release(ctx, in, pi.ID, ev, "the quote can no longer be paid: "+err.Error())
	default:
		return err
	}
	return c.write(ctx, ev, func(tx *store.Tx) error {
		cur, err := loadIntent(tx, in.ID)
		if err != nil {
			return err
		}
		if !waiting(cur.Status) {
			return nil
		}
		if _, err := c.engine.Pay(tx, guest, sc); err != nil {
			return err
		}
		cur.IntentID, cur.Status, cur.ActionURL = pi.ID, statusAuthorised, ""
		return cur.save(tx, c.nowMS())
	})
}

// release cancels a hold that backs nothing.
func (c *Card) release(ctx context.Context, in *intent, pi string, ev *stripe.Event, why string) error {
	c.log.Warn("card: releasing a hold", "payment", in.ID, "intent", pi, "why", why)
	return c.write(ctx, ev, func(tx *store.Tx) error {
		cur, err := loadIntent(tx, in.ID)
		if err != nil {
			return err
		}
		if !waiting(cur.Status) {
			return nil
		}
		cur.IntentID, cur.Status, cur.Failure = pi, statusFailed, why
		if err := enqueue(tx, c.nowMS(), stripeOp{ID: "sharespot-cancel-" + in.ID, Kind: opCancel,
			SessionID: in.SessionID, Target: pi, Currency: in.Currency}); err != nil {
			return err
		}
		return cur.save(tx, c.nowMS())
	})
}

// credit funds the wallet once Stripe reports the funding succeeded.
func (c *Card) credit(ctx context.Context, in *intent, pi *stripe.PaymentIntent, ev *stripe.Event) error {
	return c.write(ctx, ev, func(tx *store.Tx) error {
		cur, err := loadIntent(tx, in.ID)
		if err != nil {
			return err
		}
		if cur.Status == statusCredited {
			return nil
		}
		now := c.nowMS()
		if _, err := ledger.Apply(tx, now, ledger.Transfer{ID: "cardfund:" + cur.ID, Debit: ledger.Card(cur.AccountID, cur.Currency),
			Credit: ledger.Wallet(cur.AccountID, cur.Currency), Amount: cur.Amount, Currency: cur.Currency,
			Memo: "wallet funded by card (Stripe " + pi.ID + ")"}); err != nil {
			return fmt.Errorf("card: credit funding %s: %w", cur.ID, err)
		}
		cur.IntentID, cur.Status, cur.ActionURL = pi.ID, statusCredited, ""
		return cur.save(tx, now)
	})
}

var requestIDRE = regexp.MustCompile(`^[A-Za-z0-9_-]{8,64}$`)

// MaxFunding caps one funding by card, in minor units.
const MaxFunding = 100_000_00

// Fund funds the caller's wallet by card: a PaymentIntent with automatic
// capture, credited when the webhook reports payment_intent.succeeded (not
// before, whatever the create call answered).
func (c *Card) Fund(ctx context.Context, p session.Party, req *sharespotv1.FundByCardRequest) (*sharespotv1.FundByCardResponse, error) {
	switch {
	case !requestIDRE.MatchString(req.RequestId):
		return nil, problem.Invalidf("request_id must be 8 to 64 letters, digits, '-' or '_'")
	case !ledger.ValidCurrency(req.Currency):
		return nil, problem.Invalidf("currency %q is not an ISO 4217 code such as EUR", req.Currency)
	case req.AmountMinor <= 0 || req.AmountMinor > MaxFunding:
		return nil, problem.Invalidf("amount_minor must be between 1 and %d, got %d", MaxFunding, req.AmountMinor)
	}
	pm, err := c.paymentMethod(req.PaymentMethod)
	if err != nil {
		return nil, err
	}
	id := "fund_" + p.AccountID + "_" + req.RequestId
	var in *intent
	if err := c.st.Write(ctx, func(tx *store.Tx) error {
		if in, err = loadIntent(tx, id); err != nil || in != nil {
			return err
		}
		now := c.nowMS()
		in = &intent{ID: id, Kind: "fund", DeviceID: p.DeviceID, AccountID: p.AccountID, Amount: req.AmountMinor, Currency: req.Currency, Status: statusCreating}
		_, err := tx.Exec(`INSERT INTO card_intents (id, kind, device_id, account_id, amount_minor, currency, status, created_ms, updated_ms)
			VALUES (?, 'fund', ?, ?, ?, ?, ?, ?, ?)`, id, p.DeviceID, p.AccountID, req.AmountMinor, req.Currency, statusCreating, now, now)
		return err
	}); err != nil {
		return nil, fmt.Errorf("card: record funding: %w", err)
	}
	if in.Amount != req.AmountMinor || in.Currency != req.Currency {
		return nil, problem.Invalidf("request_id %s was used for another funding (%d %s)", req.RequestId, in.Amount, in.Currency)
	}
	if waiting(in.Status) {
		pi, err := c.lookUp(ctx, in, pm, func() (*stripe.PaymentIntent, error) {
			cp := &stripe.PaymentIntentCreateParams{
				Amount: stripe.Int64(in.Amount), Currency: stripe.String(strings.ToLower(in.Currency)),
				CaptureMethod: stripe.String(string(stripe.PaymentIntentCaptureMethodAutomatic)), Confirm: stripe.Bool(true),
				PaymentMethod: stripe.String(pm), PaymentMethodTypes: stripe.StringSlice([]string{"card"}),
				Description: stripe.String("Sharespot wallet funding"),
			}
			if c.cfg.ReturnURL != "" {
				cp.ReturnURL = stripe.String(c.cfg.ReturnURL)
			}
			cp.AddMetadata(metadataKey, in.ID)
			cp.SetIdempotencyKey("sharespot-" + in.ID)
			return c.sc.V1PaymentIntents.Create(ctx, cp)
		})
		if err != nil {
			return nil, err
		}
		if pi != nil {
			if err := c.applyIntent(ctx, in.ID, pi, nil, false); err != nil {
				return nil, err
			}
		}
		if in, err = store.ReadT(ctx, c.st, func(tx *store.Tx) (*intent, error) { return loadIntent(tx, id) }); err != nil {
			return nil, err
		}
	}
	return &sharespotv1.FundByCardResponse{Status: payStatus(in), ActionUrl: in.ActionURL, IntentId: in.IntentID, Failure: in.Failure}, nil
}

// Onboard gives a host account its Stripe Connect Express account (made
// once, idempotency key from the account) and a fresh onboarding link.
func (c *Card) Onboard(ctx context.Context, p session.Party, returnURL, refreshURL string) (*sharespotv1.PayoutOnboardingResponse, error) {
	if returnURL == "" {
		returnURL = c.cfg.ReturnURL
	}
	if refreshURL == "" {
		refreshURL = returnURL
	}
	for _, u := range []string{returnURL, refreshURL} {
		if !strings.HasPrefix(u, "https://") && !strings.HasPrefix(u, "http://") {
			return nil, problem.Invalidf("return_url and refresh_url must be http(s) URLs; the server has no default (--stripe-return-url)")
		}
	}
	acct, ready, err := c.payoutOf(ctx, p.AccountID)
	if err != nil {
		return nil, err
	}
	if acct == "" {
		ap := &stripe.AccountCreateParams{Type: stripe.String(string(stripe.AccountTypeExpress)),
			Capabilities: &stripe.AccountCreateCapabilitiesParams{Transfers: &stripe.AccountCreateCapabilitiesTransfersParams{Requested: stripe.Bool(true)}}}
		ap.AddMetadata("sharespot_account", p.AccountID)
		ap.SetIdempotencyKey("sharespot-account-" + p.AccountID)
		a, err := c.sc.V1Accounts.Create(ctx, ap)
		if err != nil {
			return nil, stripeErr("create the payout account", err)
		}
		if err := c.st.Write(ctx, func(tx *store.Tx) error {
			_, err := tx.Exec(`INSERT INTO payout_accounts (account_id, stripe_account, ready, created_ms) VALUES (?, ?, 0, ?)`, p.AccountID, a.ID, c.nowMS())
			if errors.Is(err, store.ErrConflict) {
				return nil // a concurrent call recorded it (the same account: same idempotency key)
			}
			return err
		}); err != nil {
			return nil, fmt.Errorf("card: record payout account: %w", err)
		}
		if acct, ready, err = c.payoutOf(ctx, p.AccountID); err != nil {
			return nil, err
		}
	}
	lp := &stripe.AccountLinkCreateParams{Account: stripe.String(acct), RefreshURL: stripe.String(refreshURL), ReturnURL: stripe.String(returnURL),
		Type: stripe.String("account_onboarding")}
	link, err := c.sc.V1AccountLinks.Create(ctx, lp)
	if err != nil {
		return nil, stripeErr("create the onboarding link", err)
	}
	return &sharespotv1.PayoutOnboardingResponse{AccountId: acct, Url: link.URL, Ready: ready}, nil
}

func (c *Card) payoutOf(ctx context.Context, accountID string) (acct string, ready bool, err error) {
	err = c.st.Read(ctx, func(tx *store.Tx) error {
		acct, ready, err = payoutAccount(tx, accountID)
		return err
	})
	return acct, ready, err
}
