//go:build !device

package main

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/sharespot/sharespot/internal/account"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/deviceid"
	"github.com/sharespot/sharespot/internal/ledger"
	"github.com/sharespot/sharespot/internal/payment"
	"github.com/sharespot/sharespot/internal/problem"
	"github.com/sharespot/sharespot/internal/server"
	"github.com/sharespot/sharespot/internal/session"
	"github.com/sharespot/sharespot/internal/size"
	"github.com/sharespot/sharespot/internal/store"
)

// WalletAuditCmd checks the ledger and the sessions' escrow.
type WalletAuditCmd struct {
	Data string `env:"SHARESPOT_DATA" help:"The server's data directory." placeholder:"DIR"`
	DB   string `name:"db" env:"SHARESPOT_DB" help:"The server's database, when it is PostgreSQL (a postgres:// URL)." placeholder:"URL"`
	JSON bool   `help:"Print the audit as JSON (a failed audit still exits 1)."`
}

// Run audits: the ledger balances (every balance equals its transfers, the
// sum of all is zero, none below zero that may not be) and the sessions
// (an ended session holds nothing in escrow).
func (c *WalletAuditCmd) Run(env *runEnv) error {
	target, err := server.DBTarget(c.Data, c.DB)
	if err != nil {
		return fmt.Errorf("--db: %w", err)
	}
	st, err := store.Open(env.ctx, target, store.Options{})
	if err != nil {
		return err
	}
	defer st.Close()
	var rep session.AuditReport
	err = st.Read(env.ctx, func(tx *store.Tx) error {
		var err error
		rep, err = session.Audit(tx)
		return err
	})
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	if c.JSON {
		if err := writeJSON(env.stdout, auditOf(rep)); err != nil {
			return err
		}
		if !rep.OK() {
			return errors.New("audit failed: see the JSON (ok is false)")
		}
		return nil
	}
	a, recon := rep.Ledger, rep.Usage
	open, ended, heldAfterEnd := rep.Open, rep.Ended, rep.HeldAfterEnd
	curs := make([]string, 0, len(a.Sums))
	for cur := range a.Sums {
		curs = append(curs, cur)
	}
	slices.Sort(curs)
	for _, cur := range curs {
		fmt.Fprintf(env.stdout, "%s: all balances sum to %s\n", cur, client.FormatMoney(a.Sums[cur], cur))
	}
	fmt.Fprintf(env.stdout, "sessions: %d open, %d ended, %d ended with money in escrow\n", open, ended, heldAfterEnd)
	// Usage reconciliation: who is to blame where a host's count ran
	// ahead of what its guest acknowledged: a host that counted beyond the
	// window, or a guest that stopped acknowledging and was held.
	var verified, unverified, flagged int
	for _, r := range recon.Hosts {
		verified, unverified = verified+r.Verified, unverified+r.Unverified
		if r.Overclaimed > 0 {
			flagged++
			fmt.Fprintf(env.stdout, "usage: host %s counted more than its guests acknowledged plus the window in %d of %d verified sessions (%s counted, %s acknowledged): the host over-counted; it was paid at most what was acknowledged plus the window\n",
				r.Host, r.Overclaimed, r.Verified, size.Format(r.HostBytes), size.Format(r.AckedBytes))
		}
	}
	for _, g := range recon.Guests {
		fmt.Fprintf(env.stdout, "usage: guest %s stopped acknowledging in %d verified sessions and was held at the credit window by the host's gateway: the guest withheld, not the host\n", g.Guest, g.Sessions)
	}
	fmt.Fprintf(env.stdout, "usage: %d sessions verified by the guest's acknowledgments, %d unverified; %d hosts counted ahead of their guests, %d guests withheld acknowledgments\n",
		verified, unverified, flagged, len(recon.Guests))
	for _, d := range rep.RecordDrift {
		fmt.Fprintln(env.stdout, "host records:", d)
	}
	if rep.EndedUnmarked > 0 {
		fmt.Fprintf(env.stdout, "sessions: %d ended without their end time (a server of this release sets it when it starts)\n", rep.EndedUnmarked)
	}
	if !rep.OK() {
		return fmt.Errorf("audit failed: negative %v, drift %v, ended sessions holding escrow %d, host records differing from their sessions %d, ended sessions without their end time %d",
			a.Negative, a.Drift, heldAfterEnd, len(rep.RecordDrift), rep.EndedUnmarked)
	}
	fmt.Fprintln(env.stdout, "ledger consistent")
	return nil
}

// WalletFundCmd funds a wallet directly in the server's database.
type WalletFundCmd struct {
	Data     string `env:"SHARESPOT_DATA" help:"The server's data directory." placeholder:"DIR"`
	DB       string `name:"db" env:"SHARESPOT_DB" help:"The server's database, when it is PostgreSQL (a postgres:// URL)." placeholder:"URL"`
	Account  string `help:"Account ID to fund." xor:"who"`
	Device   string `help:"Device ID whose account to fund: the whole ID, or its start as tables show it (2KBYEUI) if no other device's ID starts so." xor:"who"`
	Amount   int64  `required:"" placeholder:"MINOR" help:"Amount in the currency's minor unit (cents for EUR): 500 with --currency EUR is €5.00."`
	Currency string `required:"" help:"ISO 4217 currency code, e.g. EUR."`
	Key      string `help:"Idempotency key: funding twice with the same key adds the money once."`
}

// Run funds the wallet.
func (c *WalletFundCmd) Run(env *runEnv) error {
	if c.Account == "" && c.Device == "" {
		return errors.New("name the wallet with --account or --device")
	}
	prefix := ""
	if c.Device != "" {
		var err error
		if prefix, err = deviceid.ParsePrefix(c.Device); err != nil {
			return fmt.Errorf("--device %q: %w", c.Device, err)
		}
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
	cur := strings.ToUpper(c.Currency)
	var bal int64
	var applied bool
	err = st.Write(env.ctx, func(tx *store.Tx) error {
		acct := c.Account
		if prefix != "" {
			var err error
			if c.Device, acct, err = account.Find(tx, prefix); err != nil {
				if problem.KindOf(err) == problem.NotFound {
					return fmt.Errorf("device %s is not known to this server: sign it in first (any device command, such as `sharespot wallet balance`, does)", prefix)
				}
				return err
			}
		}
		var err error
		if applied, err = payment.Fund(tx, time.Now().UnixMilli(), acct, cur, c.Amount, c.Key, "operator funding"); err != nil {
			return err
		}
		c.Account = acct
		bal, err = ledger.Balance(tx, ledger.Wallet(acct, cur).ID)
		return err
	})
	if err != nil {
		return err
	}
	if c.Device != "" {
		fmt.Fprintf(env.stdout, "device %s: account %s\n", c.Device, c.Account)
	}
	if !applied {
		fmt.Fprintf(env.stdout, "already funded with key %q; balance of %s: %s\n", c.Key, c.Account, client.FormatMoney(bal, cur))
		return nil
	}
	fmt.Fprintf(env.stdout, "funded %s with %s; balance: %s\n", c.Account, client.FormatMoney(c.Amount, cur), client.FormatMoney(bal, cur))
	return nil
}
