package main

import (
	"encoding/json"
	"io"
	"sync"
	"time"
)

// connectEvent is one line of `connect --json`: a JSON object per event, in
// the order they happen. The field names are stable; a field a kind of
// event has no value for is 0 or "" (reason and proxy are left out where
// they do not apply).
//
//	event           granted | online | low | topped_up | exhausted | ended
//	time            when, RFC 3339 in UTC with milliseconds
//	session_id      the session
//	hotspot         the hotspot's SSID as shown ("" when not known)
//	bytes           granted: the first purchase; topped_up: what it added;
//	                low: what is left
//	used, granted   the session's used and granted bytes as last heard
//	amount_minor    granted, topped_up: what that purchase cost, in minor units;
//	                ended: what the session cost (paid less refunded)
//	currency        ISO 4217 code of amount_minor, paid_minor, refunded_minor
//	paid_minor      ended: what was paid into escrow
//	refunded_minor  ended: what came back
//	proxy           online: the local forwarder's address (host:port)
//	reason          ended: why it ended
type connectEvent struct {
	Event         string `json:"event"`
	Time          string `json:"time"`
	SessionID     string `json:"session_id"`
	Hotspot       string `json:"hotspot"`
	Bytes         int64  `json:"bytes"`
	Used          int64  `json:"used"`
	Granted       int64  `json:"granted"`
	AmountMinor   int64  `json:"amount_minor"`
	Currency      string `json:"currency"`
	PaidMinor     int64  `json:"paid_minor"`
	RefundedMinor int64  `json:"refunded_minor"`
	Proxy         string `json:"proxy,omitempty"`
	Reason        string `json:"reason,omitempty"`
}

// The events of `connect --json`.
const (
	evGranted   = "granted"
	evOnline    = "online"
	evLow       = "low"
	evToppedUp  = "topped_up"
	evExhausted = "exhausted"
	evEnded     = "ended"
)

// eventLog writes connect's events as JSON lines; a nil log writes nothing.
type eventLog struct {
	mu  sync.Mutex
	enc *json.Encoder
	now func() time.Time
}

func newEventLog(w io.Writer) *eventLog {
	return &eventLog{enc: json.NewEncoder(w), now: time.Now}
}

// emit writes e, stamped with the time.
func (l *eventLog) emit(e connectEvent) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	e.Time = l.now().UTC().Format("2006-01-02T15:04:05.000Z07:00")
	l.enc.Encode(e) // a closed stdout loses the line; connect goes on
}
