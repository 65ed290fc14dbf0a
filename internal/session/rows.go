package session

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/problem"
	"github.com/sharespot/sharespot/internal/registry"
	"github.com/sharespot/sharespot/internal/relay"
	"github.com/sharespot/sharespot/internal/store"
)

// row is a sessions row.
type row struct {
	ID, HotspotID, Host, Guest string
	GuestAccount               string // the guest device's (a device never changes account)
	State                      sharespotv1.SessionState
	Requested, Reserved        int64
	Granted, Used              int64
	PendingTopUp               int64
	Currency, Suite            string
	// Tariff is the copy made at the request (Currency is its currency).
	Tariff                  registry.Tariff
	GuestKeys               []byte
	DeadlineMS              int64
	EndReason               string
	SettledHost, SettledFee int64
	Refunded                int64
	// Evidence: who counts (Mode, fixed at the request; Verified is Mode
	// == verified), the guest's device key that signs its counts, the
	// guest's last signed count and the credit window beyond it (one rule
	// on everything granted, protocol.Window); at settlement the host's
	// own count, and whether its gateway held a guest that stopped
	// acknowledging.
	Mode               sharespotv1.UsageMode
	GuestKey           []byte
	GuestAcked, Window int64
	HostCount          int64
	Verified           bool
	GuestHeld          bool
	// The gateway the first grant named.
	GatewayKind, GatewayAddress string
	CreatedMS, UpdatedMS        int64
	// Card adjustments after settlement (Stripe refunds and disputes),
	// added by RecordCardRefund and RecordDispute (card.go): read with
	// the row, never saved by it.
	CardRefunded, Disputed int64
	// EndedMS is when the session ended, 0 while it is unfinished: set by
	// the save that ends it and by no other (the indexes of a party's
	// unfinished sessions key on it, so that transitions before the end
	// leave them alone; migration 0009).
	EndedMS int64

	// counted is what the row adds to its host's record (host_records)
	// as it is in the database: the save that changes it applies the
	// difference in the same transaction.
	counted hostRecord
}

// hostRecord is one session's part of its host's record, or a sum of
// them: a settled verified session that was granted bytes counts once,
// and as over-counted when the host counted more than the guest
// acknowledged and the credit window (HostRecords).
type hostRecord struct {
	sessions, overCounted, counted, acknowledged int64
}

func (s *row) record() hostRecord {
	if s.State != sharespotv1.SessionState_SESSION_STATE_ENDED || s.Mode != sharespotv1.UsageMode_USAGE_MODE_VERIFIED || s.Granted <= 0 {
		return hostRecord{}
	}
	r := hostRecord{sessions: 1, counted: s.HostCount, acknowledged: s.GuestAcked}
	if s.HostCount > s.GuestAcked+s.Window {
		r.overCounted = 1
	}
	return r
}

// recount adds to the host's record what the row's write changed in it:
// one statement for the write that settles a verified session, none for
// the others.
func (s *row) recount(tx *store.Tx) error {
	now := s.record()
	d := hostRecord{now.sessions - s.counted.sessions, now.overCounted - s.counted.overCounted,
		now.counted - s.counted.counted, now.acknowledged - s.counted.acknowledged}
	if d == (hostRecord{}) {
		return nil
	}
	err := tx.ExecLater("session: record of host "+s.Host, `INSERT INTO host_records (host_device_id, verified_sessions, over_counted_sessions, counted_bytes, acknowledged_bytes)
		VALUES (?, ?, ?, ?, ?) ON CONFLICT (host_device_id) DO UPDATE SET
		verified_sessions = host_records.verified_sessions + excluded.verified_sessions,
		over_counted_sessions = host_records.over_counted_sessions + excluded.over_counted_sessions,
		counted_bytes = host_records.counted_bytes + excluded.counted_bytes,
		acknowledged_bytes = host_records.acknowledged_bytes + excluded.acknowledged_bytes`,
		s.Host, d.sessions, d.overCounted, d.counted, d.acknowledged)
	if err != nil {
		return err
	}
	s.counted = now
	return nil
}

// saveRow is a save's statement but for the end's ended_ms and its WHERE.
const saveRow = `UPDATE sessions SET state = ?, reserved_bytes = ?, granted_bytes = ?, used_bytes = ?, pending_topup_bytes = ?,
	suite = ?, deadline_ms = ?, end_reason = ?, settled_host_minor = ?, settled_fee_minor = ?, refunded_minor = ?, updated_ms = ?,
	guest_acked_bytes = ?, credit_window_bytes = ?, host_count_bytes = ?, verified = ?, guest_held = ?, gateway_kind = ?, gateway_address = ?`

const rowCols = `id, hotspot_id, host_device_id, guest_device_id, state, requested_bytes, reserved_bytes, granted_bytes,
	used_bytes, pending_topup_bytes, currency, suite, guest_keys, deadline_ms, end_reason, settled_host_minor,
	settled_fee_minor, refunded_minor, created_ms, updated_ms, guest_account_id, tariff_price_minor, tariff_topup_price_minor,
	tariff_unit_bytes, tariff_min_purchase_bytes, guest_acked_bytes, credit_window_bytes, host_count_bytes, verified,
	usage_mode, guest_device_key, guest_held, gateway_kind, gateway_address`

func (s *row) insert(tx *store.Tx) error {
	if s.State == sharespotv1.SessionState_SESSION_STATE_ENDED && s.EndedMS == 0 {
		s.EndedMS = max(s.UpdatedMS, 1)
	}
	err := tx.ExecLater("session: insert "+s.ID, `INSERT INTO sessions (`+rowCols+`, ended_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		s.ID, s.HotspotID, s.Host, s.Guest, int32(s.State), s.Requested, s.Reserved, s.Granted, s.Used, s.PendingTopUp,
		s.Currency, s.Suite, s.GuestKeys, s.DeadlineMS, s.EndReason, s.SettledHost, s.SettledFee, s.Refunded, s.CreatedMS, s.UpdatedMS,
		s.GuestAccount, s.Tariff.PriceMinor, s.Tariff.TopUpPriceMinor, s.Tariff.UnitBytes, s.Tariff.MinPurchase,
		s.GuestAcked, s.Window, s.HostCount, flag(s.Verified), int32(s.Mode), s.GuestKey, flag(s.GuestHeld), s.GatewayKind, s.GatewayAddress, s.EndedMS)
	if err != nil {
		return err
	}
	if err := s.recount(tx); err != nil {
		return err
	}
	s.CardRefunded, s.Disputed = 0, 0 // not inserted: the columns' default
	s.Tariff.Currency = s.Currency
	s.remember(tx)
	tx.Remember(quotesKey(s.ID), []quote{}) // a new session has no quotes
	return nil
}

func (s *row) save(tx *store.Tx, nowMS int64) error {
	s.UpdatedMS = nowMS
	args := []any{int32(s.State), s.Reserved, s.Granted, s.Used, s.PendingTopUp, s.Suite, s.DeadlineMS, s.EndReason,
		s.SettledHost, s.SettledFee, s.Refunded, s.UpdatedMS, s.GuestAcked, s.Window, s.HostCount, flag(s.Verified), flag(s.GuestHeld), s.GatewayKind, s.GatewayAddress}
	q := saveRow + ` WHERE id = ?`
	if s.State == sharespotv1.SessionState_SESSION_STATE_ENDED && s.EndedMS == 0 {
		// The end, and only the end, names ended_ms: SQLite rewrites an
		// index whose key or condition has a column the UPDATE sets.
		s.EndedMS = max(nowMS, 1)
		q, args = saveRow+`, ended_ms = ? WHERE id = ?`, append(args, s.EndedMS)
	}
	err := tx.ExecLater("session: save "+s.ID, q, append(args, s.ID)...)
	if err != nil {
		return err
	}
	if err := s.recount(tx); err != nil {
		return err
	}
	s.remember(tx)
	return nil
}

// loadRow returns a copy of the session's row: the writer's memory's, or
// the database's.
func loadRow(tx *store.Tx, id string) (*row, error) {
	s, err := store.Memo(tx, sessionKey(id), func() (*row, error) { return readRow(tx, id) }, sameRow)
	if err != nil {
		return nil, err
	}
	return s.clone(), nil
}

func readRow(tx *store.Tx, id string) (*row, error) {
	s, err := scanRow(tx.QueryRow(rowQuery(tx), id))
	if errors.Is(err, store.ErrNotFound) {
		return nil, problem.NotFoundf("session %s not found", id)
	}
	if err != nil {
		return nil, fmt.Errorf("session: load %s: %w", id, err)
	}
	return s, nil
}

// rowQuery reads a session's row. It locks the row in a PostgreSQL write,
// so that a concurrent transition of the same session waits here (and is
// retried) rather than after doing its work; a read takes no lock.
func rowQuery(tx *store.Tx) string {
	return rowSelect + ` WHERE id = ?` + tx.ForUpdate()
}

const rowSelect = `SELECT ` + rowCols + `, card_refunded_minor, disputed_minor, ended_ms FROM sessions`

func scanRow(sc store.Scanner) (*row, error) {
	s := new(row)
	var state, verified, mode, held int32
	err := sc.Scan(&s.ID, &s.HotspotID, &s.Host, &s.Guest, &state, &s.Requested, &s.Reserved, &s.Granted,
		&s.Used, &s.PendingTopUp, &s.Currency, &s.Suite, &s.GuestKeys, &s.DeadlineMS, &s.EndReason, &s.SettledHost,
		&s.SettledFee, &s.Refunded, &s.CreatedMS, &s.UpdatedMS, &s.GuestAccount, &s.Tariff.PriceMinor, &s.Tariff.TopUpPriceMinor,
		&s.Tariff.UnitBytes, &s.Tariff.MinPurchase, &s.GuestAcked, &s.Window, &s.HostCount, &verified,
		&mode, &s.GuestKey, &held, &s.GatewayKind, &s.GatewayAddress, &s.CardRefunded, &s.Disputed, &s.EndedMS)
	if err != nil {
		return nil, err
	}
	s.State = sharespotv1.SessionState(state)
	s.Tariff.Currency, s.Verified = s.Currency, verified != 0
	s.Mode, s.GuestHeld = sharespotv1.UsageMode(mode), held != 0
	s.counted = s.record()
	return s, nil
}

// loadWithQuotes is loadRow for a write that will read the session's
// quotes too (a payment, a confirmation, a grant, an end). On PostgreSQL,
// when the write has read neither, it reads both in one round trip: the
// quotes after the row's lock, which they change only under, so they stay
// true for the rest of the write (its own memory keeps them, as quotesOf
// would). extra are read with them (the receipts, which are recorded under
// the same lock). On SQLite the writer's memory serves both, and extra is
// not read.
func loadWithQuotes(tx *store.Tx, id string, extra ...store.Reading) (*row, error) {
	s, _, err := loadWithQuotesRead(tx, id, extra...)
	return s, err
}

// loadWithQuotesRead is loadWithQuotes, reporting whether extra was read.
func loadWithQuotesRead(tx *store.Tx, id string, extra ...store.Reading) (*row, bool, error) {
	_, kept := store.Recall[*row](tx, sessionKey(id))
	_, quotesKept := store.Recall[[]quote](tx, quotesKey(id))
	if tx.ForUpdate() == "" || kept || quotesKept {
		s, err := loadRow(tx, id)
		return s, false, err
	}
	s, err := readWithQuotes(tx, "?", id, extra...)
	if err != nil {
		return nil, false, fmt.Errorf("session: load %s and its quotes: %w", id, err)
	}
	if s == nil {
		return nil, false, problem.NotFoundf("session %s not found", id)
	}
	return s, true, nil
}

// loadByQuote is loadWithQuotes for a write that knows a quote, not its
// session (a payment), on PostgreSQL: the quote's session is found, locked
// and read with its quotes in one round trip. No such quote is not found.
func loadByQuote(tx *store.Tx, quoteID string) (*row, error) {
	s, err := readWithQuotes(tx, "(SELECT session_id FROM quotes WHERE id = ?)", quoteID)
	if err != nil {
		return nil, fmt.Errorf("session: load the session of quote %s: %w", quoteID, err)
	}
	if s == nil {
		return nil, problem.NotFoundf("quote %s not found", quoteID)
	}
	tx.Remember(quoteSessionKey(quoteID), s.ID) // a quote never changes session
	return s, nil
}

// readWithQuotes reads the session whose ID is the SQL expression id (of
// one argument, arg), locked in a PostgreSQL write, and its quotes, with
// extra, in one round trip, and keeps both in the write's memory. No such
// session is nil.
func readWithQuotes(tx *store.Tx, id string, arg any, extra ...store.Reading) (*row, error) {
	var s *row
	qs := []quote{}
	err := tx.Together(append([]store.Reading{
		{Query: rowSelect + ` WHERE id = ` + id + tx.ForUpdate(), Args: []any{arg}, Row: func(sc store.Scanner) (err error) {
			s, err = scanRow(sc)
			return err
		}},
		{Query: quotesSelect + ` WHERE session_id = ` + id + quotesOrder, Args: []any{arg}, Row: func(sc store.Scanner) error {
			q, err := scanQuote(sc)
			if err == nil {
				qs = append(qs, *q)
			}
			return err
		}}}, extra...)...)
	if err != nil || s == nil {
		return nil, err
	}
	tx.Remember(sessionKey(s.ID), s)
	tx.Remember(quotesKey(s.ID), qs)
	return s.clone(), nil
}

type role int

const (
	roleHost role = iota + 1
	roleGuest
	roleEither
)

// load reads a session for p, refusing a party that is not in it (as not
// found, so session IDs reveal nothing) or plays the wrong role in it.
func (e *Engine) load(tx *store.Tx, id string, p Party, want role) (*row, error) {
	s, err := loadRow(tx, id)
	if err != nil {
		return nil, err
	}
	return checkParty(s, p, id, want)
}

// loadWith is load for a write that reads extra too: with the session's
// row in one round trip on PostgreSQL when this write has not read the row
// yet (a read after the row's lock), else after it.
func (e *Engine) loadWith(tx *store.Tx, id string, p Party, want role, extra ...store.Reading) (*row, error) {
	if _, kept := store.Recall[*row](tx, sessionKey(id)); tx.ForUpdate() == "" || kept {
		s, err := e.load(tx, id, p, want)
		if err != nil {
			return nil, err
		}
		return s, tx.Together(extra...)
	}
	var s *row
	err := tx.Together(append([]store.Reading{{Query: rowQuery(tx), Args: []any{id}, Row: func(sc store.Scanner) (err error) {
		s, err = scanRow(sc)
		return err
	}}}, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("session: load %s: %w", id, err)
	}
	if s == nil {
		return nil, problem.NotFoundf("session %s not found", id)
	}
	tx.Remember(sessionKey(id), s)
	return checkParty(s.clone(), p, id, want)
}

// loadQuoted is load for a write that reads the session's quotes too
// (loadWithQuotes), and their receipts when it renders the session for its
// guest (receipts).
func (e *Engine) loadQuoted(tx *store.Tx, id string, p Party, want role, receipts bool) (*row, error) {
	var extra []store.Reading
	if receipts {
		extra = append(extra, e.pay.ReadingReceipts(tx, id))
	}
	s, err := loadWithQuotes(tx, id, extra...)
	if err != nil {
		return nil, err
	}
	return checkParty(s, p, id, want)
}

// checkParty checks that p may act on s in the role wanted.
func checkParty(s *row, p Party, id string, want role) (*row, error) {
	isHost, isGuest := p.DeviceID == s.Host, p.DeviceID == s.Guest
	switch {
	case !isHost && !isGuest:
		return nil, problem.NotFoundf("session %s not found", id)
	case want == roleHost && !isHost:
		return nil, problem.Deniedf("only the host of session %s may do this", id)
	case want == roleGuest && !isGuest:
		return nil, problem.Deniedf("only the guest of session %s may do this", id)
	}
	return s, nil
}

// quote is a quotes row.
type quote struct {
	ID, SessionID string
	Kind          sharespotv1.QuoteKind
	Bytes, Amount int64
	Currency      string
	State         sharespotv1.QuoteState
	ExpiresMS     int64
	CreatedMS     int64
	// Tranche is the quote's place in grant order (0: not granted); Used
	// and Billed are set at settlement.
	Tranche      int32
	Used, Billed int64
}

const quoteCols = `id, session_id, kind, bytes, amount_minor, currency, state, expires_ms, created_ms, tranche, used_bytes, billed_minor`

func scanQuote(sc interface{ Scan(...any) error }) (*quote, error) {
	q := new(quote)
	var kind, state int32
	if err := sc.Scan(&q.ID, &q.SessionID, &kind, &q.Bytes, &q.Amount, &q.Currency, &state, &q.ExpiresMS, &q.CreatedMS,
		&q.Tranche, &q.Used, &q.Billed); err != nil {
		return nil, err
	}
	q.Kind, q.State = sharespotv1.QuoteKind(kind), sharespotv1.QuoteState(state)
	return q, nil
}

// quoteOf returns a copy of the quote of a session the write has loaded,
// from the session's quotes (quotesOf: the memory's, or one read of them
// all, which the write's later steps take again, on PostgreSQL too). A
// quote of another session, or none, is not found.
func quoteOf(tx *store.Tx, sessionID, id string) (*quote, error) {
	qs, err := quotesOf(tx, sessionID)
	if err != nil {
		return nil, err
	}
	for _, q := range qs {
		if q.ID == id {
			return q, nil
		}
	}
	return nil, problem.NotFoundf("quote %s not found in session %s", id, sessionID)
}

// loadQuote returns a copy of a quote: from its session's quotes in the
// writer's memory when it knows them, else the database's.
func loadQuote(tx *store.Tx, id string) (*quote, error) {
	if sid, ok := store.Recall[string](tx, quoteSessionKey(id)); ok {
		if q, err := quoteOf(tx, sid, id); problem.KindOf(err) != problem.NotFound {
			return q, err
		}
	}
	q, err := scanQuote(tx.QueryRow(`SELECT `+quoteCols+` FROM quotes WHERE id = ?`, id))
	if errors.Is(err, store.ErrNotFound) {
		return nil, problem.NotFoundf("quote %s not found", id)
	}
	if err != nil {
		return nil, fmt.Errorf("session: load quote %s: %w", id, err)
	}
	tx.Remember(quoteSessionKey(id), q.SessionID) // a quote never changes session
	return q, nil
}

func (q *quote) insert(tx *store.Tx) error {
	err := tx.ExecLater("session: insert quote "+q.ID, `INSERT INTO quotes (`+quoteCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		q.ID, q.SessionID, int32(q.Kind), q.Bytes, q.Amount, q.Currency, int32(q.State), q.ExpiresMS, q.CreatedMS, q.Tranche, q.Used, q.Billed)
	if err != nil {
		return err
	}
	tx.Remember(quoteSessionKey(q.ID), q.SessionID)
	changeQuotes(tx, q.SessionID, func(qs []quote) []quote { return append(qs, *q) })
	return nil
}

func (q *quote) save(tx *store.Tx) error {
	err := tx.ExecLater("session: save quote "+q.ID, `UPDATE quotes SET state = ?, tranche = ? WHERE id = ?`, int32(q.State), q.Tranche, q.ID)
	if err != nil {
		return err
	}
	changeQuote(tx, q.SessionID, q.ID, func(k *quote) { k.State, k.Tranche = q.State, q.Tranche })
	return nil
}

// saveBill records a tranche's settlement.
func (q *quote) saveBill(tx *store.Tx) error {
	err := tx.ExecLater("session: bill quote "+q.ID, `UPDATE quotes SET used_bytes = ?, billed_minor = ? WHERE id = ?`, q.Used, q.Billed, q.ID)
	if err != nil {
		return err
	}
	changeQuote(tx, q.SessionID, q.ID, func(k *quote) { k.Used, k.Billed = q.Used, q.Billed })
	return nil
}

// quotesOf returns copies of a session's quotes, in tranche order (quotes
// never granted, tranche 0, first; then by creation): the writer's
// memory's, or the database's.
func quotesOf(tx *store.Tx, sessionID string) ([]*quote, error) {
	qs, err := store.Memo(tx, quotesKey(sessionID), func() ([]quote, error) { return readQuotes(tx, sessionID) }, sameQuotes)
	if err != nil {
		return nil, err
	}
	out := make([]*quote, len(qs))
	for i := range qs {
		q := qs[i]
		out[i] = &q
	}
	return out, nil
}

// quotesQuery reads a session's quotes in quotesOf's order.
const (
	quotesQuery  = quotesSelect + ` WHERE session_id = ?` + quotesOrder
	quotesSelect = `SELECT ` + quoteCols + ` FROM quotes`
	quotesOrder  = ` ORDER BY tranche, created_ms, id`
)

func readQuotes(tx *store.Tx, sessionID string) ([]quote, error) {
	rows, err := tx.Query(quotesQuery, sessionID)
	if err != nil {
		return nil, fmt.Errorf("session: quotes of %s: %w", sessionID, err)
	}
	defer rows.Close()
	qs := []quote{}
	for rows.Next() {
		q, err := scanQuote(rows)
		if err != nil {
			return nil, err
		}
		qs = append(qs, *q)
	}
	return qs, rows.Err()
}

// nextTranche is the tranche number the session's next grant gets.
func nextTranche(tx *store.Tx, sessionID string) (int32, error) {
	qs, err := quotesOf(tx, sessionID)
	if err != nil {
		return 0, fmt.Errorf("session: tranches of %s: %w", sessionID, err)
	}
	var n int32
	for _, q := range qs {
		n = max(n, q.Tranche)
	}
	return n + 1, nil
}

func (q *quote) proto(rc *sharespotv1.Receipt) *sharespotv1.Quote {
	return &sharespotv1.Quote{Id: q.ID, SessionId: q.SessionID, Kind: q.Kind, Bytes: q.Bytes, AmountMinor: q.Amount,
		Currency: q.Currency, ExpiresUnixMs: q.ExpiresMS, State: q.State, Receipt: rc, Tranche: q.Tranche, UsedBytes: q.Used, BilledMinor: q.Billed}
}

// pendingQuote returns the session's top-up quote that is open, paid or
// confirmed, if any.
// (There is at most one: a top-up is refused while one is pending.)
func (e *Engine) pendingQuote(tx *store.Tx, sessionID string) (*quote, error) {
	qs, err := quotesOf(tx, sessionID)
	if err != nil {
		return nil, fmt.Errorf("session: pending top-up of %s: %w", sessionID, err)
	}
	for _, q := range qs {
		switch q.State {
		case sharespotv1.QuoteState_QUOTE_STATE_OPEN, sharespotv1.QuoteState_QUOTE_STATE_PAID, sharespotv1.QuoteState_QUOTE_STATE_CONFIRMED:
			if q.Kind == sharespotv1.QuoteKind_QUOTE_KIND_TOPUP {
				return q, nil
			}
		}
	}
	return nil, nil
}

func (e *Engine) nowMS() int64 { return e.now().UnixMilli() }

func (e *Engine) send(tx *store.Tx, to, sessionID string, env *sharespotv1.Envelope) error {
	return relay.Append(tx, e.wake, e.nowMS(), to, sessionID, env)
}

// clip makes a party's free text (an end or decline reason) fit to relay:
// valid UTF-8 without control characters, at most n bytes. Clients escape
// what they print too; the server stores nothing that rewrites a screen.
func clip(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == utf8.RuneError {
			return -1
		}
		return r
	}, strings.ToValidUTF8(s, ""))
	for len(s) > n {
		_, size := utf8.DecodeLastRuneInString(s)
		s = s[:len(s)-size]
	}
	return s
}

func stateName(s sharespotv1.SessionState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "SESSION_STATE_"))
}

func quoteStateName(s sharespotv1.QuoteState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "QUOTE_STATE_"))
}

func flag(b bool) int32 {
	if b {
		return 1
	}
	return 0
}
