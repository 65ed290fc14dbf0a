package portal_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/chromedp/chromedp"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/account"
	"github.com/sharespot/sharespot/internal/store"
)

// TestBrowserAnswerAfterInbox: the page reads its inbox and the answers
// to its calls in whatever order they come. Here the answers to Confirm
// and RequestTopUp are held until the page has read and acknowledged
// what the host sent in reply (the grant; the top-up's fee), as happens
// when the host answers faster than the answer travels. The page shows
// the grant and the fee, never "waiting" over them. (Seen in CI: a grant
// read before Confirm's answer left the page waiting while it was online.)
func TestBrowserAnswerAfterInbox(t *testing.T) {
	late := &answerLate{}
	r := newLoopRig(t, loopOptions{wrap: late.wrap})
	r.fundPage(1000)
	sid := r.buy(3)
	r.afterAnswer(late, "Confirm", 1, "online", "Online.")
	r.waitGranted(sid, 3*mb)

	r.run("top up 2 MB", chromedp.SetValue(chromedp.ID("topup-amount"), "2"), chromedp.Click(chromedp.ID("topup")),
		chromedp.WaitVisible(chromedp.ID("pay-h")))
	r.afterAnswer(late, "RequestTopUp", 2, "pay", "")
	r.run("pay the top-up", chromedp.Click(chromedp.ID("pay-wallet")), chromedp.WaitVisible(chromedp.ID("online-h")))
	r.afterAnswer(late, "Confirm", 3, "online", "Online.")
	r.waitGranted(sid, 5*mb)

	r.run("end", chromedp.Click(chromedp.ID("end")), chromedp.WaitVisible(chromedp.ID("ended-h")))
	if s := r.session(sid); s.State != sharespotv1.SessionState_SESSION_STATE_ENDED || s.PaidMinor != 50 || s.RefundedMinor != 50 {
		t.Fatalf("ended: %v, paid %d, refunded %d; want 50 paid, all back", s.State, s.PaidMinor, s.RefundedMinor)
	}
	r.env.MustAudit(t)
}

// afterAnswer waits until the page has read the held answer to its
// method call (the n-th held so far) and checks what it shows then.
func (r *rig) afterAnswer(late *answerLate, method string, n int32, section, status string) {
	r.t.Helper()
	deadline := time.Now().Add(2 * time.Minute) // a bound, not a timing
	for late.given.Load() < n {
		if time.Now().After(deadline) {
			r.t.Fatalf("the %s answer was never held until the page had read the host's reply (%d of %d held answers given; see the log)", method, late.given.Load(), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The answer has been written; the page reads it in a task of its
	// own, after the fetch's entry is complete.
	r.waitFor("the "+method+" answer read", `performance.getEntriesByType("resource").filter(e => e.name.endsWith("/`+method+`")).length >= `+strconv.Itoa(int(late.count(method))))
	r.run("a moment", chromedp.Sleep(300*time.Millisecond))
	shown := eval[string](r, "section", `[...document.querySelectorAll("main > section")].filter(s => !s.hidden).map(s => s.id).join(",")`)
	if said := r.text("status"); shown != section || said != status {
		r.t.Fatalf("after the %s answer came late, the page shows section %q saying %q; want %q saying %q", method, shown, said, section, status)
	}
}

// answerLate stands between the page and the server. It holds the
// answers to Confirm and RequestTopUp until the host's reply (the grant;
// the fee) is in the page's inbox and the page has acknowledged it.
type answerLate struct {
	r       *rig
	acked   atomic.Uint64 // the highest sequence the page acknowledged
	given   atomic.Int32  // answers held until the page had read the reply
	confirm atomic.Int32  // Confirm answers given
	topUp   atomic.Int32  // RequestTopUp answers given
}

func (a *answerLate) count(method string) int32 {
	if method == "Confirm" {
		return a.confirm.Load()
	}
	return a.topUp.Load()
}

func (a *answerLate) wrap(r *rig, next http.Handler) http.Handler {
	a.r = r
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		var confirm bool
		switch req.URL.Path {
		case "/sharespot.v1.InboxService/Ack":
			var m struct{ Seq string }
			readBody(req, &m)
			rec := httptest.NewRecorder()
			next.ServeHTTP(rec, req)
			if seq, err := strconv.ParseUint(m.Seq, 10, 64); err == nil && rec.Code == http.StatusOK {
				for old := a.acked.Load(); seq > old && !a.acked.CompareAndSwap(old, seq); old = a.acked.Load() {
				}
			}
			copyAnswer(w, rec)
			return
		case "/sharespot.v1.SessionService/Confirm":
			confirm = true
		case "/sharespot.v1.SessionService/RequestTopUp":
		default:
			next.ServeHTTP(w, req)
			return
		}
		var m struct{ SessionID string }
		readBody(req, &m)
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, req)
		if rec.Code == http.StatusOK {
			if err := a.hold(m.SessionID, confirm); err != nil {
				a.r.t.Logf("answer given without the hold: %v", err)
			} else {
				a.given.Add(1)
			}
		}
		if confirm {
			a.confirm.Add(1)
		} else {
			a.topUp.Add(1)
		}
		copyAnswer(w, rec)
	})
}

// hold waits until the host has replied to session sid (granted every
// paid quote, or quoted the top-up) and the page has acknowledged every
// message of its inbox up to then.
func (a *answerLate) hold(sid string, confirm bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var guest string
	for {
		res, err := a.r.hostC.Sessions.Get(ctx, connect.NewRequest(&sharespotv1.GetRequest{SessionId: sid}))
		if err != nil {
			return err
		}
		s := res.Msg.Session
		if replied(s, confirm) {
			guest = s.GuestDeviceId
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the host did not reply: %v", s.Quotes)
		case <-time.After(20 * time.Millisecond):
		}
	}
	var next int64
	if err := a.r.env.Srv.Store().Read(ctx, func(tx *store.Tx) (err error) {
		next, _, err = account.Cursor(tx, guest, false)
		return err
	}); err != nil {
		return err
	}
	for a.acked.Load() < uint64(next-1) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("the page acknowledged %d of the %d messages of its inbox", a.acked.Load(), next-1)
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// replied says whether the host has answered a confirmation (every
// quote is granted) or a top-up request (its fee is open).
func replied(s *sharespotv1.Session, confirm bool) bool {
	granted, open := 0, 0
	for _, q := range s.Quotes {
		switch {
		case q.State == sharespotv1.QuoteState_QUOTE_STATE_GRANTED:
			granted++
		case q.State == sharespotv1.QuoteState_QUOTE_STATE_OPEN && q.Kind == sharespotv1.QuoteKind_QUOTE_KIND_TOPUP:
			open++
		}
	}
	if confirm {
		return granted == len(s.Quotes)
	}
	return open == 1
}

// readBody reads req's JSON body into v and leaves it for the handler.
func readBody(req *http.Request, v any) {
	body, _ := io.ReadAll(req.Body)
	req.Body = io.NopCloser(bytes.NewReader(body))
	_ = json.Unmarshal(body, v)
}

func copyAnswer(w http.ResponseWriter, rec *httptest.ResponseRecorder) {
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	w.Write(rec.Body.Bytes())
}
