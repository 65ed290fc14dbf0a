package session

import (
	"bytes"
	"cmp"
	"reflect"
	"slices"
	"strings"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/store"
)

// What the session engine keeps in the writer's memory (store.Memo): each
// session's row and its quotes as the database holds them, and the session
// each quote belongs to. The engine is the one writer of both tables
// (owners_test.go), so each statement that changes them here also changes
// what is kept: a save keeps the row it saved, a quote's insert or save
// changes the session's kept quotes, and a change made in SQL alone (a card
// adjustment) forgets the row. A write's reads of a session then cost no
// statement after the request that made it: the quote, payment,
// confirmation, grant and end each read the row and its quotes again, and
// each answer renders them.

func sessionKey(id string) string           { return "session/" + id }
func quotesKey(sessionID string) string     { return "quotes/" + sessionID }
func quoteSessionKey(quoteID string) string { return "quote-session/" + quoteID }

// clone copies a row, so that a kept one is never changed.
func (s *row) clone() *row {
	c := *s
	c.GuestKeys, c.GuestKey = bytes.Clone(s.GuestKeys), bytes.Clone(s.GuestKey)
	return &c
}

// remember keeps the row as just written, or forgets an ended one: the
// writes after the end are few (a late count, a card refund), and the
// memory keeps the sessions that are under way rather than the many that
// are over (an ended session's quotes stay until the memory is full).
func (s *row) remember(tx *store.Tx) {
	if s.State == sharespotv1.SessionState_SESSION_STATE_ENDED {
		tx.Forget(sessionKey(s.ID))
		return
	}
	tx.Remember(sessionKey(s.ID), s.clone())
}

// sameRow: a kept row and a stored one hold the same (an empty key and
// none are the same).
func sameRow(kept, stored *row) bool {
	a, b := *kept, *stored
	if !bytes.Equal(a.GuestKeys, b.GuestKeys) || !bytes.Equal(a.GuestKey, b.GuestKey) {
		return false
	}
	a.GuestKeys, a.GuestKey, b.GuestKeys, b.GuestKey = nil, nil, nil, nil
	return reflect.DeepEqual(a, b)
}

func sameQuotes(kept, stored []quote) bool { return slices.Equal(kept, stored) }

// changeQuotes changes a session's kept quotes, if they are kept, as a
// statement just changed them in the database, and keeps them in
// quotesOf's order.
func changeQuotes(tx *store.Tx, sessionID string, change func([]quote) []quote) {
	qs, ok := store.Recall[[]quote](tx, quotesKey(sessionID))
	if !ok {
		return
	}
	qs = change(slices.Clone(qs))
	slices.SortStableFunc(qs, func(a, b quote) int {
		return cmp.Or(cmp.Compare(a.Tranche, b.Tranche), cmp.Compare(a.CreatedMS, b.CreatedMS), strings.Compare(a.ID, b.ID))
	})
	tx.Remember(quotesKey(sessionID), qs)
}

// changeQuote changes one kept quote.
func changeQuote(tx *store.Tx, sessionID, quoteID string, change func(*quote)) {
	changeQuotes(tx, sessionID, func(qs []quote) []quote {
		for i := range qs {
			if qs[i].ID == quoteID {
				change(&qs[i])
			}
		}
		return qs
	})
}
