package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/size"
)

// guestStateFlags choose where a guest keeps its sessions' keys.
type guestStateFlags struct {
	State  string `env:"SHARESPOT_STATE" help:"Directory for the guest's persisted sessions (keys, access response, inbox position); default: $XDG_STATE_HOME/sharespot/guest, or beside the device key." placeholder:"DIR"`
	Resume bool   `help:"Resume this device's live session (a restarted connect does so by itself when one exists); fail if there is none."`
}

// stateDir is --state, or a directory per device key: $XDG_STATE_HOME/
// sharespot/guest-<key file name>, or beside the key when XDG_STATE_HOME
// is not set. Two keys never share one directory.
func (f guestStateFlags) stateDir(keyPath string) string {
	if f.State != "" {
		return f.State
	}
	name := "guest-" + filepath.Base(keyPath)
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "sharespot", name)
	}
	return filepath.Join(filepath.Dir(keyPath), name+".state")
}

// begin returns the session to go on with: this device's live session,
// resumed from its saved state, or a new one on target (C1.5–C1.6).
func (c *ConnectCmd) begin(ctx context.Context, out io.Writer, cl *client.Client, g *client.Guest, store client.GuestStore, want int64) (*client.GuestSession, error) {
	gs, err := resumable(ctx, out, cl, g, store)
	if err != nil {
		return nil, err
	}
	if gs != nil {
		fmt.Fprintf(out, "resuming session %s on %q (%s asked)\n", gs.SessionID, gs.SSID, size.Format(gs.WantBytes))
		return gs, nil
	}
	if c.Resume {
		return nil, errors.New("--resume: this device has no live session to resume")
	}
	if c.Target == "" {
		return nil, errors.New("name the hotspot to connect to (its SSID or BSSID; `sharespot scan` lists them)")
	}
	offers, err := discover(ctx, cl, c.scanFlags)
	if err != nil {
		return nil, err
	}
	offer := pick(offers, c.Target)
	if offer == nil {
		return nil, fmt.Errorf("no Sharespot hotspot %q in range; `sharespot scan` lists them", c.Target)
	}
	ses, err := g.RequestOffer(ctx, offer, want) // C1.5–C1.6, at the tariff shown (C1.4)
	if err != nil {
		return nil, fmt.Errorf("request access: %w", err)
	}
	gs = g.SessionState(ses, client.SSIDText(offer.AccessPoint.Ssid), want)
	if err := store.Save(gs); err != nil {
		// Nothing is paid yet: end the session rather than pay for a code
		// a restart could not open.
		_, eerr := cl.Sessions.End(context.WithoutCancel(ctx), connect.NewRequest(&sharespotv1.EndRequest{SessionId: ses.Id, Reason: "guest cannot save its keys"}))
		return nil, errors.Join(err, eerr)
	}
	fmt.Fprintf(out, "asked %q for %s\n", gs.SSID, size.Format(want))
	return gs, nil
}

// resumable finds this device's live session that has saved state, and
// tidies the rest: a saved session that ended while the guest was away is
// shown and forgotten; a live session whose keys were never saved (the
// guest stopped between asking and saving, before any payment) is ended.
func resumable(ctx context.Context, out io.Writer, cl *client.Client, g *client.Guest, store client.GuestStore) (*client.GuestSession, error) {
	res, err := cl.Sessions.ListSessions(ctx, connect.NewRequest(&sharespotv1.ListSessionsRequest{OpenOnly: true}))
	if err != nil {
		return nil, fmt.Errorf("list this device's sessions: %w", err)
	}
	saved, err := store.List()
	if err != nil {
		return nil, err
	}
	var live []string
	var found *client.GuestSession
	for _, s := range res.Msg.Sessions {
		if s.GuestDeviceId != cl.DeviceID() {
			continue // this device is the host
		}
		live = append(live, s.Id)
		if !slices.Contains(saved, s.Id) || found != nil {
			reason := "guest restarted without the session's keys"
			if found != nil {
				reason = "guest resumed another session"
			}
			if _, err := cl.Sessions.End(ctx, connect.NewRequest(&sharespotv1.EndRequest{SessionId: s.Id, Reason: reason})); err != nil {
				return nil, fmt.Errorf("end session %s: %w", s.Id, err)
			}
			fmt.Fprintf(out, "ended session %s: %s\n", s.Id, reason)
			continue
		}
		gs, err := store.Load(s.Id)
		if err != nil {
			return nil, err
		}
		if err := g.Restore(gs); err != nil {
			return nil, err
		}
		found = gs
	}
	for _, id := range saved {
		if slices.Contains(live, id) {
			continue
		}
		r, err := cl.Sessions.Get(ctx, connect.NewRequest(&sharespotv1.GetRequest{SessionId: id}))
		if err == nil {
			fmt.Fprintf(out, "session %s ended while you were away (%s): %s\n", id, client.SafeText(r.Msg.Session.EndReason), settlement(r.Msg.Session))
		}
		if err := store.Remove(id); err != nil {
			return nil, err
		}
	}
	return found, nil
}

// settlement says what a session used, paid and got back.
func settlement(s *sharespotv1.Session) string {
	return fmt.Sprintf("used %s of %s; paid %s, refunded %s", size.Format(s.UsedBytes), size.Format(s.GrantedBytes),
		client.FormatMoney(s.PaidMinor, s.Currency), client.FormatMoney(s.RefundedMinor, s.Currency))
}

// pendingQuote is the session's quote waiting for the guest: open (to
// pay) or paid (to confirm). A restarted guest finds it here even when
// the fee information was delivered to the process that stopped.
func pendingQuote(ctx context.Context, cl *client.Client, sid string) (*sharespotv1.Quote, error) {
	res, err := cl.Sessions.Get(ctx, connect.NewRequest(&sharespotv1.GetRequest{SessionId: sid}))
	if err != nil {
		return nil, err
	}
	for _, q := range res.Msg.Session.Quotes {
		if q.State == sharespotv1.QuoteState_QUOTE_STATE_OPEN || q.State == sharespotv1.QuoteState_QUOTE_STATE_PAID {
			return q, nil
		}
	}
	return nil, nil
}

// sessionState is the session's state on the server.
func sessionState(ctx context.Context, cl *client.Client, sid string) (*sharespotv1.Session, error) {
	res, err := cl.Sessions.Get(ctx, connect.NewRequest(&sharespotv1.GetRequest{SessionId: sid}))
	if err != nil {
		return nil, fmt.Errorf("get session %s: %w", sid, err)
	}
	return res.Msg.Session, nil
}
