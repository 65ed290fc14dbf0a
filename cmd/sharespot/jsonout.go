package main

import (
	"strings"
	"time"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/client"
)

// The --json outputs of the wallet and device commands (scan's and
// bench's are beside their commands). Field names are snake_case and
// stable: a field is added, never renamed or removed. Money is an integer
// count of the currency's minor unit (amount_minor) with its ISO 4217
// currency; times are RFC 3339 in UTC and Unix milliseconds.

// balanceJSON is `wallet balance --json`.
type balanceJSON struct {
	AccountID string      `json:"account_id"`
	Balances  []moneyJSON `json:"balances"` // one per currency held; [] when empty
}

type moneyJSON struct {
	Currency    string `json:"currency"`
	AmountMinor int64  `json:"amount_minor"`
}

func balanceOf(res *sharespotv1.BalanceResponse) balanceJSON {
	out := balanceJSON{AccountID: res.AccountId, Balances: []moneyJSON{}}
	for _, m := range res.Balances {
		out.Balances = append(out.Balances, moneyJSON{m.Currency, m.AmountMinor})
	}
	return out
}

// movementJSON is one line of `wallet history --json` (an array, newest
// first, as the server lists them).
type movementJSON struct {
	ID            string `json:"id"`
	CreatedAt     string `json:"created_at"`
	CreatedUnixMS int64  `json:"created_unix_ms"`
	// Direction is "in" (money to this device) or "out".
	Direction   string `json:"direction"`
	AmountMinor int64  `json:"amount_minor"`
	Currency    string `json:"currency"`
	// Account is this device's account it moved on: "wallet", "card" (a
	// payment held on, captured from or released to a card) or "payout"
	// (to the host's Stripe account).
	Account string `json:"account"`
	Memo    string `json:"memo"`
	// Text is the line `wallet history` prints, in words; Kind what the
	// movement was (fund, card_fund, pay, refund, settle, fee, …), with
	// the session, hotspot and size it was for where there was one.
	Text      string `json:"text"`
	Kind      string `json:"kind"`
	SessionID string `json:"session_id"`
	SSID      string `json:"ssid"`
	Bytes     int64  `json:"bytes"`
}

// movementOf is t as this device (account acct) sees it.
func movementOf(t *sharespotv1.Transfer, acct string) movementJSON {
	mine := func(id, kind string) bool { return strings.HasPrefix(id, kind+":"+acct+":") }
	m := movementJSON{ID: t.Id, CreatedAt: time.UnixMilli(t.CreatedUnixMs).UTC().Format(time.RFC3339Nano), CreatedUnixMS: t.CreatedUnixMs,
		Direction: "out", AmountMinor: t.AmountMinor, Currency: t.Currency, Account: "wallet", Memo: t.Memo,
		Kind: t.Kind, SessionID: t.SessionId, SSID: client.SSIDText(t.Ssid), Bytes: t.Bytes}
	_, m.Text = client.HistoryLine(t, acct)
	switch {
	case mine(t.Credit, "wallet") && !mine(t.Debit, "wallet"):
		m.Direction = "in"
	case mine(t.Credit, "card"):
		m.Direction, m.Account = "in", "card"
	case mine(t.Debit, "card"):
		m.Account = "card"
	case mine(t.Credit, "payout"):
		m.Account = "payout"
	}
	return m
}

// deviceJSON is `device id --json`.
type deviceJSON struct {
	DeviceID string `json:"device_id"`
	ShortID  string `json:"short_id"` // the form tables show
	KeyFile  string `json:"key_file"`
	Created  bool   `json:"created"` // the key was created by this command
}
