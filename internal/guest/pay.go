package guest

import (
	"context"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/client"
)

// PayQuote pays a quote (C3.2 / C1.13) with method and returns the signed
// payment-success response. A card payment may take a while: it asks
// again every poll until Stripe reports the amount authorised, and when
// the bank wants 3-D Secure it tells onAction the URL the card holder
// must open (once per URL). It gives up when the quote expires or ctx
// ends. paymentMethod is a Stripe PaymentMethod ID, or empty for the test
// card on a test-mode server.
func PayQuote(ctx context.Context, c *client.Client, q *sharespotv1.Quote, method sharespotv1.PayMethod, paymentMethod string, poll time.Duration, onAction func(url string)) (*sharespotv1.Receipt, error) {
	if poll <= 0 {
		poll = time.Second
	}
	var deadline <-chan time.Time
	if q.ExpiresUnixMs > 0 {
		// A little past the expiry, so that an authorisation reported
		// just before it still arrives.
		t := time.NewTimer(time.Until(time.UnixMilli(q.ExpiresUnixMs)) + 30*time.Second)
		defer t.Stop()
		deadline = t.C
	}
	shown := ""
	for {
		res, err := c.Payments.Pay(ctx, connect.NewRequest(&sharespotv1.PayRequest{QuoteId: q.Id, Method: method, PaymentMethod: paymentMethod}))
		if err != nil && (method != sharespotv1.PayMethod_PAY_METHOD_CARD || connect.CodeOf(err) != connect.CodeUnavailable) {
			// The wallet answers at once; a card payment waits out
			// Stripe being unreachable.
			return nil, err
		}
		if err == nil {
			m := res.Msg
			switch m.Status {
			case sharespotv1.PayStatus_PAY_STATUS_PAID, sharespotv1.PayStatus_PAY_STATUS_UNSPECIFIED: // an older server: the wallet
				if m.Receipt == nil {
					return nil, errors.New("the server reported the quote paid but sent no receipt")
				}
				return m.Receipt, nil
			case sharespotv1.PayStatus_PAY_STATUS_FAILED:
				return nil, fmt.Errorf("card payment failed: %s", m.Failure)
			case sharespotv1.PayStatus_PAY_STATUS_REQUIRES_ACTION:
				if m.ActionUrl != "" && m.ActionUrl != shown && onAction != nil {
					shown = m.ActionUrl
					onAction(m.ActionUrl)
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-deadline:
			return nil, fmt.Errorf("the card payment of quote %s was not authorised before the quote expired", q.Id)
		case <-time.After(poll):
		}
	}
}
