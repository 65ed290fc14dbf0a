//go:build !device

package main

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/sharespot/sharespot/internal/card"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/server"
	"github.com/sharespot/sharespot/internal/store"
)

// StripeTestEventsCmd plays Stripe's webhooks for a server in test mode
// against stripe-mock, which sends none: each card payment or wallet
// funding waiting for Stripe is authorised (or declined), by a webhook
// event signed with the endpoint's secret, as Stripe would for a test
// card.
type StripeTestEventsCmd struct {
	Data          string        `env:"SHARESPOT_DATA" help:"The server's data directory." placeholder:"DIR"`
	DB            string        `name:"db" env:"SHARESPOT_DB" help:"The server's database, when it is PostgreSQL (a postgres:// URL)." placeholder:"URL"`
	URL           string        `name:"url" default:"http://127.0.0.1:8474" help:"The server's address (its webhook is at /stripe/webhook)."`
	WebhookSecret string        `name:"stripe-webhook-secret" env:"STRIPE_WEBHOOK_SECRET" required:"" help:"The server's webhook signing secret (its --stripe-webhook-secret)."`
	Decline       bool          `help:"Decline the cards instead (payment_intent.payment_failed)."`
	Watch         time.Duration `help:"Go on looking for new payments this long (e.g. 10m; 0: once)."`
}

// Run posts the events and says what it did.
func (c *StripeTestEventsCmd) Run(env *runEnv) error {
	if !strings.HasPrefix(c.WebhookSecret, "whsec_") {
		return errors.New("--stripe-webhook-secret: want the endpoint's signing secret, whsec_…")
	}
	target, err := server.DBTarget(c.Data, c.DB)
	if err != nil {
		return fmt.Errorf("--db: %w", err)
	}
	st, err := store.Open(env.ctx, target, store.Options{})
	if err != nil {
		return err
	}
	defer st.Close()
	done := map[string]bool{}
	until := time.Now().Add(c.Watch)
	for {
		ws, err := card.WaitingForStripe(env.ctx, st)
		if err != nil {
			return err
		}
		for _, w := range ws {
			if done[w.ID] {
				continue
			}
			payload, what := w.Succeeded(), "authorised"
			if w.Kind == "fund" {
				what = "paid"
			}
			if c.Decline {
				payload, what = w.Declined(), "declined"
			}
			code, err := card.PostEvent(env.ctx, c.URL, c.WebhookSecret, time.Now(), payload)
			if err != nil {
				return fmt.Errorf("post to %s: %w", c.URL, err)
			}
			if code != 200 {
				return fmt.Errorf("the server answered %d to the event for %s (is --stripe-webhook-secret the server's?)", code, w.ID)
			}
			done[w.ID] = true
			fmt.Fprintf(env.stdout, "%s %s: %s %s (%s)\n", w.Kind, w.ID, what, client.FormatMoney(w.Amount, w.Currency), w.IntentID)
		}
		if c.Watch <= 0 || time.Now().After(until) {
			if len(done) == 0 {
				fmt.Fprintln(env.stdout, "no card payment waits for Stripe")
			}
			return nil
		}
		select {
		case <-env.ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}
