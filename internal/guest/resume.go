package guest

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
)

// Resumed is what Resume found.
type Resumed struct {
	// Session is the live session to go on with (nil: none).
	Session *Session
	// Ended are sessions Resume ended: live on the server but without
	// saved keys (the guest stopped between asking and saving, before any
	// payment), or a second live one.
	Ended []EndedNow
	// Away are saved sessions that ended while the guest was away, as the
	// server settled them (nil where the server no longer knows one).
	Away []*sharespotv1.Session
}

// EndedNow is a session Resume ended, and why.
type EndedNow struct {
	Session *sharespotv1.Session
	Reason  string
}

// Resume picks up this device's live session from its Store after a
// restart, and tidies the rest: a saved session that ended while the
// guest was away is forgotten, a live session whose keys were never saved
// is ended (nothing was paid for it), and so is any second live one. The
// returned session goes on from the server's view of it (Buy finds a quote
// waiting; Granted has the saved access response).
func (g *Guest) Resume(ctx context.Context) (*Resumed, error) {
	if g.Store == nil {
		return nil, errors.New("guest: resume needs a store")
	}
	res, err := g.C.Sessions.ListSessions(ctx, connect.NewRequest(&sharespotv1.ListSessionsRequest{OpenOnly: true}))
	if err != nil {
		return nil, fmt.Errorf("list this device's sessions: %w", err)
	}
	saved, err := g.Store.List()
	if err != nil {
		return nil, err
	}
	out := &Resumed{}
	var live []string
	for _, s := range res.Msg.Sessions {
		if s.GuestDeviceId != g.C.DeviceID() {
			continue // this device is the host
		}
		live = append(live, s.Id)
		if !slices.Contains(saved, s.Id) || out.Session != nil {
			reason := "guest restarted without the session's keys"
			if out.Session != nil {
				reason = "guest resumed another session"
			}
			ended, err := g.C.Sessions.End(ctx, connect.NewRequest(&sharespotv1.EndRequest{SessionId: s.Id, Reason: reason}))
			if err != nil {
				return nil, fmt.Errorf("end session %s: %w", s.Id, err)
			}
			out.Ended = append(out.Ended, EndedNow{ended.Msg.Session, reason})
			continue
		}
		if out.Session, err = g.resume(s); err != nil {
			return nil, err
		}
	}
	for _, id := range saved {
		if slices.Contains(live, id) {
			continue
		}
		if r, err := g.C.Sessions.Get(ctx, connect.NewRequest(&sharespotv1.GetRequest{SessionId: id})); err == nil {
			out.Away = append(out.Away, r.Msg.Session)
		}
		if err := g.Store.Remove(id); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// resume restores a live session from its saved state.
func (g *Guest) resume(s *sharespotv1.Session) (*Session, error) {
	saved, err := g.Store.Load(s.Id)
	if err != nil {
		return nil, err
	}
	if err := g.Restore(saved); err != nil {
		return nil, err
	}
	shown := saved.Tariff
	if shown == nil {
		shown = s.Tariff // saved by an older version
	}
	out := g.attach(saved.SessionID, saved.HotspotID, saved.HostDeviceID, saved.SSID, saved.WantBytes, shown)
	out.saved, out.resumed, out.Mode = saved, true, s.UsageMode
	return out, nil
}

// Settle waits for a session that is ending (ended before a restart) to
// settle, then forgets it.
func (s *Session) Settle(ctx context.Context) (*sharespotv1.Session, error) {
	cur, err := s.Get(ctx)
	if err != nil {
		return nil, err
	}
	return s.settled(ctx, cur)
}
