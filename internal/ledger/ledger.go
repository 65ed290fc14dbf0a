// Package ledger is Sharespot's double-entry ledger. Every movement of money
// is a transfer from one account to another, in one currency, under an
// idempotency key: applying the same key twice changes nothing the second
// time. Balances never go negative except funding accounts (money that came
// from outside), so the sum of all balances is always zero.
//
// Accounts:
//
//	wallet:<account>:<CUR>  a user's money
//	escrow:<session>        money paid for a session, not yet settled
//	fee:<CUR>               the platform's fees
//	funding:<CUR>           money that entered from outside (negative)
//	card:<account>:<CUR>    a user's card, through Stripe: authorised (negative),
//	                        released, refunded (outside money: funding kind)
//	cardloss:<CUR>          what the platform bore for card refunds and disputes
//	payout:<account>:<CUR>  a host's share transferred to its Stripe account
package ledger

import (
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"regexp"
	"strings"

	"github.com/sharespot/sharespot/internal/store"
)

// Account kinds.
const (
	KindWallet  = "wallet"
	KindEscrow  = "escrow"
	KindFee     = "fee"
	KindFunding = "funding"
)

// Errors.
var (
	// ErrInsufficientFunds: the debited account would go negative.
	ErrInsufficientFunds = errors.New("ledger: insufficient funds")
	// ErrCurrencyMismatch: an account holds another currency.
	ErrCurrencyMismatch = errors.New("ledger: currency mismatch")
	// ErrIdempotencyConflict: the key was used for a different transfer.
	ErrIdempotencyConflict = errors.New("ledger: idempotency key reused for a different transfer")
)

var currencyRE = regexp.MustCompile(`^[A-Z]{3}$`)

// ValidCurrency reports whether c looks like an ISO 4217 code.
func ValidCurrency(c string) bool { return currencyRE.MatchString(c) }

// Account names an account.
type Account struct {
	ID       string
	Kind     string
	Owner    string
	Currency string
}

// Wallet is the wallet account of a user account in a currency.
func Wallet(accountID, currency string) Account {
	return Account{ID: "wallet:" + accountID + ":" + currency, Kind: KindWallet, Owner: accountID, Currency: currency}
}

// Escrow is the escrow account of a session.
func Escrow(sessionID, currency string) Account {
	return Account{ID: "escrow:" + sessionID, Kind: KindEscrow, Owner: sessionID, Currency: currency}
}

// Fee is the platform's fee account.
func Fee(currency string) Account {
	return Account{ID: "fee:" + currency, Kind: KindFee, Owner: "platform", Currency: currency}
}

// FeeShards is how many fee accounts share a currency's fees. Every
// settlement credits the platform's fees; spreading them over shards keeps
// that one balance from being the row every concurrent settlement fights
// over (PostgreSQL aborts serializable transactions that collide on it).
const FeeShards = 16

// FeeShard is the fee account that key's (a session's) fee goes to.
func FeeShard(currency, key string) Account {
	h := fnv.New32a()
	h.Write([]byte(key))
	a := Fee(currency)
	a.ID = fmt.Sprintf("%s:%02d", a.ID, h.Sum32()%FeeShards)
	return a
}

// FeeTotal is the platform's fees in a currency, over all shards.
func FeeTotal(tx *store.Tx, currency string) (int64, error) {
	var total int64
	if err := tx.QueryRow(`SELECT COALESCE(SUM(balance), 0) FROM ledger_accounts WHERE kind = 'fee' AND currency = ?`, currency).Scan(&total); err != nil {
		return 0, fmt.Errorf("ledger: fee total: %w", err)
	}
	return total, nil
}

// Funding is where outside money enters.
func Funding(currency string) Account {
	return Account{ID: "funding:" + currency, Kind: KindFunding, Owner: "platform", Currency: currency}
}

// Card is a user account's card (a Stripe payment method), in a currency:
// money authorised on the card enters escrow from here, the part not
// captured goes back here, and Stripe's refunds and disputes come back
// here. It is outside money (funding kind): negative by what was captured.
func Card(accountID, currency string) Account {
	return Account{ID: "card:" + accountID + ":" + currency, Kind: KindFunding, Owner: accountID, Currency: currency}
}

// CardLosses is where the platform bears card refunds and disputes.
func CardLosses(currency string) Account {
	return Account{ID: "cardloss:" + currency, Kind: KindFunding, Owner: "platform", Currency: currency}
}

// Payout is a host account's Stripe connected account: its share of card
// payments leaves the wallet here when the transfer is decided.
func Payout(accountID, currency string) Account {
	return Account{ID: "payout:" + accountID + ":" + currency, Kind: KindFunding, Owner: accountID, Currency: currency}
}

// AccountsOf lists the IDs of the wallet and outside accounts (card,
// payout) owned by a user account.
func AccountsOf(tx *store.Tx, owner string) ([]string, error) {
	rows, err := tx.Query(`SELECT id FROM ledger_accounts WHERE owner = ? AND kind IN ('wallet', 'funding') ORDER BY id`, owner)
	if err != nil {
		return nil, fmt.Errorf("ledger: accounts of %s: %w", owner, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out = append(out, id)
	}
	return out, rows.Err()
}

// Transfer is one movement of money.
type Transfer struct {
	ID       string // idempotency key
	Debit    Account
	Credit   Account
	Amount   int64
	Currency string
	Memo     string
}

// Apply records t inside tx. It returns applied=false, nil when a transfer
// with the same ID and the same content already exists. On any error the
// caller must roll back (return the error from its store.Write function):
// Apply may have changed rows before it failed.
func Apply(tx *store.Tx, nowMS int64, t Transfer) (applied bool, err error) {
	if t.ID == "" {
		return false, errors.New("ledger: transfer without an idempotency key")
	}
	if t.Amount <= 0 {
		return false, fmt.Errorf("ledger: transfer %s: amount %d is not positive", t.ID, t.Amount)
	}
	if !ValidCurrency(t.Currency) {
		return false, fmt.Errorf("ledger: transfer %s: bad currency %q", t.ID, t.Currency)
	}
	if t.Debit.ID == t.Credit.ID {
		return false, fmt.Errorf("ledger: transfer %s: debit and credit are the same account", t.ID)
	}
	if t.Debit.Currency != t.Currency || t.Credit.Currency != t.Currency {
		return false, fmt.Errorf("%w: transfer %s in %s between %s and %s", ErrCurrencyMismatch, t.ID, t.Currency, t.Debit.ID, t.Credit.ID)
	}
	if tx.Engine() == store.Postgres && t.Credit.Kind != "" {
		if applied, done, err := applyPostgres(tx, nowMS, t); done || err != nil {
			return applied, err
		}
	}
	// The common path is two conditional updates; only when one matches no
	// row does Apply look closer (a new account, a currency mismatch, too
	// little money, an overflow). The debit refuses to take a non-funding
	// account below zero, so no check-then-act race exists on any engine.
	// Neither update may leave int64: SQLite would store a float.
	n, err := tx.ExecN(`UPDATE ledger_accounts SET balance = balance - ? WHERE id = ? AND currency = ? AND (kind = 'funding' OR balance >= ?) AND balance >= ?`,
		t.Amount, t.Debit.ID, t.Currency, t.Amount, math.MinInt64+t.Amount)
	if err != nil {
		return false, fmt.Errorf("ledger: debit %s: %w", t.Debit.ID, err)
	}
	if n != 1 {
		if done, err := recorded(tx, t); done || err != nil {
			return false, err
		}
		if err := ensure(tx, t.Debit); err != nil {
			return false, err
		}
		if t.Debit.Kind != KindFunding {
			return false, fmt.Errorf("%w: %s cannot pay %d %s", ErrInsufficientFunds, t.Debit.ID, t.Amount, t.Currency)
		}
		// A funding account opened just now, or one at the int64 floor.
		if n, err = tx.ExecN(`UPDATE ledger_accounts SET balance = balance - ? WHERE id = ? AND balance >= ?`,
			t.Amount, t.Debit.ID, math.MinInt64+t.Amount); err != nil {
			return false, fmt.Errorf("ledger: debit %s: %w", t.Debit.ID, err)
		} else if n != 1 {
			return false, fmt.Errorf("ledger: transfer %s: balance of %s would overflow", t.ID, t.Debit.ID)
		}
	}
	n, err = tx.ExecN(`UPDATE ledger_accounts SET balance = balance + ? WHERE id = ? AND currency = ? AND balance <= ?`,
		t.Amount, t.Credit.ID, t.Currency, math.MaxInt64-t.Amount)
	if err != nil {
		return false, fmt.Errorf("ledger: credit %s: %w", t.Credit.ID, err)
	}
	if n != 1 {
		if err := ensure(tx, t.Credit); err != nil {
			return false, err
		}
		if n, err = tx.ExecN(`UPDATE ledger_accounts SET balance = balance + ? WHERE id = ? AND balance <= ?`,
			t.Amount, t.Credit.ID, math.MaxInt64-t.Amount); err != nil {
			return false, fmt.Errorf("ledger: credit %s: %w", t.Credit.ID, err)
		} else if n != 1 {
			return false, fmt.Errorf("ledger: transfer %s: balance of %s would overflow", t.ID, t.Credit.ID)
		}
	}
	// The transfer's row last (its accounts exist by now), and only if no
	// transfer has this ID: a repeated Apply, rare, then puts the two
	// balances back and reports what the first recorded. The common path
	// is three statements, with no look-up ahead of them.
	n, err = tx.ExecN(`INSERT INTO ledger_transfers (id, debit, credit, amount, currency, memo, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO NOTHING`,
		t.ID, t.Debit.ID, t.Credit.ID, t.Amount, t.Currency, t.Memo, nowMS)
	if err != nil {
		return false, fmt.Errorf("ledger: record transfer %s: %w", t.ID, err)
	}
	if n == 1 {
		return true, nil
	}
	return again(tx, t)
}

// pgTransfer is a transfer's common path on PostgreSQL in one statement,
// one round trip: the debit as Apply's first update; the credit, only if
// the debit was taken, as an upsert that opens a new account with the
// amount (a session's escrow) or adds it to one of the transfer's currency
// that it does not overflow; the transfer's row, only if the credit was
// made and no transfer has its ID. It returns how many rows each of the
// three changed. (Every part of the statement sees the same snapshot, and
// the foreign keys are checked at its end, when the new account exists.)
const pgTransfer = pgTransferWith + `SELECT (SELECT COUNT(*) FROM d), (SELECT COUNT(*) FROM c), (SELECT COUNT(*) FROM x)`

// pgTransferGuarded is pgTransfer for a write that expects the common
// path (store.Tx.Guarded): the database fails it (a division by zero)
// unless the transfer was recorded, which it is only after the credit and
// the debit.
const pgTransferGuarded = pgTransferWith + `SELECT 1 / (CASE WHEN (SELECT COUNT(*) FROM x) = 1 THEN 1 ELSE 0 END)`

const pgTransferWith = `WITH d AS (
		UPDATE ledger_accounts SET balance = balance - $1
		WHERE id = $2 AND currency = $3 AND (kind = 'funding' OR balance >= $1) AND balance >= $4
		RETURNING 1),
	c AS (
		INSERT INTO ledger_accounts (id, kind, owner, currency, balance)
		SELECT $5, $6, $7, $3, $1 FROM d
		ON CONFLICT (id) DO UPDATE SET balance = ledger_accounts.balance + EXCLUDED.balance
		WHERE ledger_accounts.currency = EXCLUDED.currency AND ledger_accounts.balance <= $8
		RETURNING 1),
	x AS (
		INSERT INTO ledger_transfers (id, debit, credit, amount, currency, memo, created_ms)
		SELECT $9, $2, $5, $1, $3, $10, $11 FROM c
		ON CONFLICT (id) DO NOTHING
		RETURNING 1)
	`

// applyPostgres tries t's common path in one statement (pgTransfer). done
// is false when the debit was not taken, so nothing changed: Apply's
// general path then looks closer (a transfer recorded before, a new
// funding account, too little money). t is checked as Apply checks it.
func applyPostgres(tx *store.Tx, nowMS int64, t Transfer) (applied, done bool, err error) {
	args := []any{t.Amount, t.Debit.ID, t.Currency, math.MinInt64 + t.Amount,
		t.Credit.ID, t.Credit.Kind, t.Credit.Owner, math.MaxInt64 - t.Amount, t.ID, t.Memo, nowMS}
	// Expected to move the money and record the transfer: the write does
	// not wait for it (store.Tx.Guarded), and runs again when it did not.
	if tx.Guarded(pgTransferGuarded, args...) {
		return true, true, nil
	}
	var d, c, x int64
	if err := tx.QueryRow(pgTransfer, args...).Scan(&d, &c, &x); err != nil {
		return false, true, fmt.Errorf("ledger: transfer %s: %w", t.ID, err)
	}
	switch {
	case d == 0:
		return false, false, nil
	case c == 0:
		// The credit account holds another currency, or would overflow.
		if err := ensure(tx, t.Credit); err != nil {
			return false, true, err
		}
		return false, true, fmt.Errorf("ledger: transfer %s: balance of %s would overflow", t.ID, t.Credit.ID)
	case x == 0:
		applied, err := again(tx, t)
		return applied, true, err
	}
	return true, true, nil
}

// again handles a transfer whose ID was recorded before, after its two
// balances were moved: it puts them back and reports what the first
// recorded.
func again(tx *store.Tx, t Transfer) (applied bool, err error) {
	for _, undo := range []struct {
		id    string
		delta int64
	}{{t.Debit.ID, t.Amount}, {t.Credit.ID, -t.Amount}} {
		if _, err := tx.Exec(`UPDATE ledger_accounts SET balance = balance + ? WHERE id = ?`, undo.delta, undo.id); err != nil {
			return false, fmt.Errorf("ledger: transfer %s again: restore %s: %w", t.ID, undo.id, err)
		}
	}
	done, err := recorded(tx, t)
	if err == nil && !done {
		err = fmt.Errorf("ledger: transfer %s: neither recorded nor new", t.ID)
	}
	return false, err
}

// recorded reports whether a transfer with t's ID exists: done with no
// error when it is t, an ErrIdempotencyConflict when it is another.
func recorded(tx *store.Tx, t Transfer) (done bool, err error) {
	var dID, cID, cur string
	var amount int64
	err = tx.QueryRow(`SELECT debit, credit, amount, currency FROM ledger_transfers WHERE id = ?`, t.ID).Scan(&dID, &cID, &amount, &cur)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("ledger: look up transfer %s: %w", t.ID, err)
	case dID != t.Debit.ID || cID != t.Credit.ID || amount != t.Amount || cur != t.Currency:
		return false, fmt.Errorf("%w: %s", ErrIdempotencyConflict, t.ID)
	}
	return true, nil
}

func ensure(tx *store.Tx, a Account) error {
	if a.ID == "" || a.Kind == "" {
		return fmt.Errorf("ledger: incomplete account %+v", a)
	}
	// Open it if it is new (a session's escrow, say: one statement);
	// only an account that exists is read, for its currency.
	n, err := tx.ExecN(`INSERT INTO ledger_accounts (id, kind, owner, currency, balance) VALUES (?, ?, ?, ?, 0) ON CONFLICT (id) DO NOTHING`,
		a.ID, a.Kind, a.Owner, a.Currency)
	if err != nil {
		return fmt.Errorf("ledger: open account %s: %w", a.ID, err)
	}
	if n == 1 {
		return nil
	}
	var cur string
	if err := tx.QueryRow(`SELECT currency FROM ledger_accounts WHERE id = ?`, a.ID).Scan(&cur); err != nil {
		return fmt.Errorf("ledger: look up account %s: %w", a.ID, err)
	}
	if cur != a.Currency {
		return fmt.Errorf("%w: %s holds %s, not %s", ErrCurrencyMismatch, a.ID, cur, a.Currency)
	}
	return nil
}

// Balance returns an account's balance (0 for an account never used).
func Balance(tx *store.Tx, accountID string) (int64, error) {
	var b int64
	if err := tx.Together(ReadingBalance(accountID, &b)); err != nil {
		return 0, fmt.Errorf("ledger: balance of %s: %w", accountID, err)
	}
	return b, nil
}

// ReadingBalance is Balance as a reading, to send with others
// (store.Tx.Together): the balance goes into into, which an account not
// opened yet leaves as it is (0 when it starts so).
func ReadingBalance(accountID string, into *int64) store.Reading {
	return store.Reading{Query: `SELECT balance FROM ledger_accounts WHERE id = ?`, Args: []any{accountID},
		Row: func(sc store.Scanner) error { return sc.Scan(into) }}
}

// Money is an amount in a currency.
type Money struct {
	Currency string
	Amount   int64
}

// WalletBalances returns the balances of a user account's wallets.
func WalletBalances(tx *store.Tx, accountID string) ([]Money, error) {
	rows, err := tx.Query(`SELECT currency, balance FROM ledger_accounts WHERE kind = 'wallet' AND owner = ? ORDER BY currency`, accountID)
	if err != nil {
		return nil, fmt.Errorf("ledger: wallets of %s: %w", accountID, err)
	}
	defer rows.Close()
	var out []Money
	for rows.Next() {
		var m Money
		if err := rows.Scan(&m.Currency, &m.Amount); err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, rows.Err()
}

// Entry is a recorded transfer.
type Entry struct {
	ID, Debit, Credit, Currency, Memo string
	Amount, CreatedMS                 int64
}

// History lists the transfers touching any of the given accounts, newest
// first, each once, at most limit of them in all.
func History(tx *store.Tx, accountIDs []string, limit int) ([]Entry, error) {
	if len(accountIDs) == 0 {
		return nil, nil
	}
	in := "?" + strings.Repeat(", ?", len(accountIDs)-1)
	args := make([]any, 0, 2*len(accountIDs)+1)
	for range 2 {
		for _, id := range accountIDs {
			args = append(args, id)
		}
	}
	args = append(args, limit)
	rows, err := tx.Query(`SELECT id, debit, credit, amount, currency, memo, created_ms FROM ledger_transfers
		WHERE debit IN (`+in+`) OR credit IN (`+in+`) ORDER BY created_ms DESC, id LIMIT ?`, args...)
	if err != nil {
		return nil, fmt.Errorf("ledger: history of %v: %w", accountIDs, err)
	}
	defer rows.Close()
	var out []Entry
	for rows.Next() {
		var e Entry
		if err := rows.Scan(&e.ID, &e.Debit, &e.Credit, &e.Amount, &e.Currency, &e.Memo, &e.CreatedMS); err != nil {
			return nil, fmt.Errorf("ledger: history of %v: %w", accountIDs, err)
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// Audit is the result of Check.
type Audit struct {
	// Sum of all balances per currency: must be zero.
	Sums map[string]int64
	// Accounts below zero that may not be.
	Negative []string
	// Accounts whose balance differs from the sum of their transfers.
	Drift []string
}

// OK reports whether the ledger is consistent.
func (a Audit) OK() bool {
	for _, s := range a.Sums {
		if s != 0 {
			return false
		}
	}
	return len(a.Negative) == 0 && len(a.Drift) == 0
}

func (a Audit) String() string {
	return fmt.Sprintf("sums=%v negative=%v drift=%v", a.Sums, a.Negative, a.Drift)
}

// Check audits the whole ledger: balances sum to zero per currency, no
// forbidden negative balance, and every balance equals its transfers.
func Check(tx *store.Tx) (Audit, error) {
	a := Audit{Sums: map[string]int64{}}
	rows, err := tx.Query(`SELECT a.id, a.kind, a.currency, a.balance,
		COALESCE((SELECT SUM(amount) FROM ledger_transfers WHERE credit = a.id), 0) -
		COALESCE((SELECT SUM(amount) FROM ledger_transfers WHERE debit = a.id), 0)
		FROM ledger_accounts a`)
	if err != nil {
		return a, fmt.Errorf("ledger: audit: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id, kind, cur string
		var bal, net int64
		if err := rows.Scan(&id, &kind, &cur, &bal, &net); err != nil {
			return a, err
		}
		a.Sums[cur] += bal
		if bal < 0 && kind != KindFunding {
			a.Negative = append(a.Negative, id)
		}
		if bal != net {
			a.Drift = append(a.Drift, id)
		}
	}
	return a, rows.Err()
}
