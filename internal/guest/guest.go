// Package guest is the guest's side of Sharespot: its per-session HPKE
// keys, what it keeps on disk (store.go), and the purchase flow in claim
// order (session.go): the access request (C1.5–C1.6), the fee checked
// against the tariff the guest was shown, the payment and its confirmation
// (C3.1–C3.3), the sealed access response opened (C1.7, C2), top-ups
// (C1.11–C1.15), acknowledgments of what arrived, and the end with its
// settlement. `sharespot connect`, the demo, the bench and the suites all
// buy through it; a restarted guest picks its session up again (resume.go).
package guest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/seal"
)

// Guest is a guest device: its client, its keys for each session, and
// optionally what it keeps on disk.
type Guest struct {
	C *client.Client
	// Suites to offer, most preferred first (default: all known).
	Suites []seal.Suite
	// Store, if set, keeps each session's keys and access response and
	// the inbox position, so that a restarted guest goes on (Resume).
	Store *Store
	// Retry sends a call whose answer was lost (a server restart, a
	// failover) again, after finding out what the first did: a quote is
	// never paid twice.
	Retry bool
	// Wait bounds each wait for the host's answer (default 2 minutes).
	Wait time.Duration
	// Unverified: the guest cannot count what it receives (it does not
	// carry the traffic itself), so its sessions are unverified: billed on
	// the host's count, at most what was bought. By default a session is
	// verified: the guest acknowledges what it receives (Acker, or
	// Session.Acknowledge) and the host's gateway holds it to that plus
	// the credit window.
	Unverified bool

	mu   sync.Mutex
	keys map[string]map[seal.Suite]*seal.PrivateKey
	in   *client.Inbox
}

// Listen starts receiving the device's inbox for the flow's sessions (see
// client.Inbox). With a Store, the inbox position is kept there and an
// access response is saved before it is acknowledged, so a guest restarted
// after it still opens its code. h, if not nil, also sees each message
// first.
func (g *Guest) Listen(ctx context.Context, h client.Handler) (*client.Inbox, error) {
	opts := client.InboxOptions{Handle: func(ctx context.Context, env *sharespotv1.Envelope) error {
		if err := g.keep(env); err != nil {
			return err
		}
		if h != nil {
			return h(ctx, env)
		}
		return nil
	}}
	if g.Store != nil {
		after, err := g.Store.Cursor()
		if err != nil {
			return nil, err
		}
		opts.After = after
		opts.Processed = func(seq uint64) { g.Store.SaveCursor(seq) } // a lost save only means a message handled again
	}
	in := client.Listen(ctx, g.C, opts)
	g.mu.Lock()
	g.in = in
	g.mu.Unlock()
	return in, nil
}

// keep saves a session's initial access response before it is
// acknowledged.
func (g *Guest) keep(env *sharespotv1.Envelope) error {
	ag := env.GetAccessGranted()
	if g.Store == nil || ag == nil || ag.Kind != sharespotv1.QuoteKind_QUOTE_KIND_INITIAL {
		return nil
	}
	saved, err := g.Store.Load(env.SessionId)
	if err != nil || saved.Grant != nil {
		return nil // not a session of this guest's store, or kept already
	}
	saved.SaveGrant(ag)
	return g.Store.Save(saved) // an error: not acknowledged, delivered again
}

// Begin asks for bytes on the hotspot of an offer of the available set, at
// the tariff the offer showed (C1.4–C1.6); the server refuses the request
// if the hotspot's tariff has changed since. No fee above that tariff is
// ever paid. With a Store, the session's keys are saved before anything is
// paid (a session whose keys cannot be kept is ended).
func (g *Guest) Begin(ctx context.Context, o *sharespotv1.Offer, bytes int64) (*Session, error) {
	ses, err := g.RequestOffer(ctx, o, bytes)
	if err != nil {
		return nil, err
	}
	return g.begin(ctx, ses, client.SSIDText(o.GetAccessPoint().GetSsid()), bytes, o.GetTariff())
}

// BeginHotspot is Begin by the hotspot's ID, without a tariff shown: fees
// are checked against the session's tariff as the server copied it.
func (g *Guest) BeginHotspot(ctx context.Context, hotspotID string, bytes int64) (*Session, error) {
	ses, err := g.RequestAccess(ctx, hotspotID, bytes)
	if err != nil {
		return nil, err
	}
	return g.begin(ctx, ses, "", bytes, ses.GetTariff())
}

func (g *Guest) begin(ctx context.Context, ses *sharespotv1.Session, ssid string, want int64, shown *sharespotv1.Tariff) (*Session, error) {
	s := g.attach(ses.Id, ses.HotspotId, ses.HostDeviceId, ssid, want, shown)
	s.Mode = ses.UsageMode
	if g.Store != nil {
		s.saved = g.SessionState(ses, ssid, want)
		s.saved.Tariff = shown
		if err := g.Store.Save(s.saved); err != nil {
			// Nothing is paid yet: end the session rather than pay for
			// a code a restart could not open.
			_, eerr := g.C.Sessions.End(context.WithoutCancel(ctx), connect.NewRequest(&sharespotv1.EndRequest{SessionId: ses.Id, Reason: "guest cannot save its keys"}))
			s.Close()
			return nil, errors.Join(err, eerr)
		}
	}
	return s, nil
}

// attach makes the flow's handle of a session and claims its messages.
func (g *Guest) attach(id, hotspot, host, ssid string, want int64, shown *sharespotv1.Tariff) *Session {
	s := &Session{g: g, ID: id, HotspotID: hotspot, HostID: host, SSID: ssid, Want: want, Tariff: shown}
	g.mu.Lock()
	in := g.in
	g.mu.Unlock()
	if in != nil {
		s.msgs = in.Session(id)
	}
	return s
}

// RequestAccess is C1.5–C1.6 on its own: fresh keys for the session, then
// the request through the server. Begin is the flow's first step.
func (g *Guest) RequestAccess(ctx context.Context, hotspotID string, bytes int64) (*sharespotv1.Session, error) {
	return g.request(ctx, hotspotID, bytes, nil)
}

// RequestOffer is RequestAccess for an offer of the available set, bound to
// the tariff the offer showed (C1.4): the server refuses the request if the
// hotspot's tariff has changed since, and the session's tariff is the shown
// one.
func (g *Guest) RequestOffer(ctx context.Context, o *sharespotv1.Offer, bytes int64) (*sharespotv1.Session, error) {
	return g.request(ctx, o.GetHotspotId(), bytes, o.GetTariff())
}

func (g *Guest) request(ctx context.Context, hotspotID string, bytes int64, shown *sharespotv1.Tariff) (*sharespotv1.Session, error) {
	suites := g.Suites
	if len(suites) == 0 {
		suites = seal.Suites()
	}
	privs := map[seal.Suite]*seal.PrivateKey{}
	var keys []*sharespotv1.GuestKey
	for _, s := range suites {
		k, err := seal.GenerateKey(s)
		if err != nil {
			return nil, err
		}
		privs[s] = k
		keys = append(keys, &sharespotv1.GuestKey{Suite: string(s), PublicKey: k.PublicKey()})
	}
	// A request sent again with the same keys is answered with the session
	// the first made (the server knows it by its keys), so one whose
	// answer was lost is sent again.
	var res *connect.Response[sharespotv1.RequestAccessResponse]
	err := g.call(ctx, func() (err error) {
		res, err = g.C.Sessions.RequestAccess(ctx, connect.NewRequest(&sharespotv1.RequestAccessRequest{HotspotId: hotspotID, Bytes: bytes, GuestKeys: keys, ShownTariff: shown,
			UsageMode: g.mode()}))
		return err
	})
	if err != nil {
		return nil, err
	}
	g.mu.Lock()
	if g.keys == nil {
		g.keys = map[string]map[seal.Suite]*seal.PrivateKey{}
	}
	g.keys[res.Msg.Session.Id] = privs
	g.mu.Unlock()
	return res.Msg.Session, nil
}

// OpenCode is C2.1 / C2.3: open the sealed access code with the suite the
// session uses (the preset, or the one the encryption message named).
func (g *Guest) OpenCode(sessionID, hostID string, sc *sharespotv1.SealedCode) ([]byte, error) {
	if sc == nil {
		return nil, errors.New("guest: no sealed code")
	}
	g.mu.Lock()
	k := g.keys[sessionID][seal.Suite(sc.Suite)]
	g.mu.Unlock()
	if k == nil {
		return nil, fmt.Errorf("guest: no key for suite %q in session %s", sc.Suite, sessionID)
	}
	return seal.Open(k, seal.Binding{SessionID: sessionID, HostID: hostID, GuestID: g.C.DeviceID()},
		seal.Sealed{Suite: seal.Suite(sc.Suite), Enc: sc.Enc, Ciphertext: sc.Ciphertext})
}

// PublicKey returns the guest's public key for suite in a session (nil if
// none).
func (g *Guest) PublicKey(sessionID string, s seal.Suite) []byte {
	g.mu.Lock()
	defer g.mu.Unlock()
	if k := g.keys[sessionID][s]; k != nil {
		return k.PublicKey()
	}
	return nil
}

// Forget drops a finished session's keys.
func (g *Guest) Forget(sessionID string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.keys, sessionID)
}

// SessionState returns what a guest must persist about a session it just
// requested: its keys and where it goes.
func (g *Guest) SessionState(ses *sharespotv1.Session, ssid string, want int64) *Saved {
	keys := map[seal.Suite][]byte{}
	g.mu.Lock()
	for s, k := range g.keys[ses.Id] {
		keys[s] = k.Bytes()
	}
	g.mu.Unlock()
	return &Saved{SessionID: ses.Id, HotspotID: ses.HotspotId, HostDeviceID: ses.HostDeviceId, SSID: ssid, WantBytes: want, Keys: keys, Tariff: ses.Tariff}
}

// Restore gives a restarted guest back a session's keys.
func (g *Guest) Restore(gs *Saved) error {
	privs := map[seal.Suite]*seal.PrivateKey{}
	for s, b := range gs.Keys {
		k, err := seal.ParsePrivateKey(s, b)
		if err != nil {
			return fmt.Errorf("guest: restore the %s key of session %s: %w", s, gs.SessionID, err)
		}
		privs[s] = k
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.keys == nil {
		g.keys = map[string]map[seal.Suite]*seal.PrivateKey{}
	}
	g.keys[gs.SessionID] = privs
	return nil
}

// mode is the usage mode the guest's requests ask for.
func (g *Guest) mode() sharespotv1.UsageMode {
	if g.Unverified {
		return sharespotv1.UsageMode_USAGE_MODE_UNVERIFIED
	}
	return sharespotv1.UsageMode_USAGE_MODE_VERIFIED
}

func (g *Guest) wait() time.Duration {
	if g.Wait > 0 {
		return g.Wait
	}
	return 2 * time.Minute
}

// call runs f once, or with Retry until its answer is not lost.
func (g *Guest) call(ctx context.Context, f func() error) error {
	if !g.Retry {
		return f()
	}
	return client.Retry(ctx, f)
}
