package gateway

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"sync"
	"time"

	"github.com/sharespot/sharespot/internal/protocol"
)

// CodeGate is a Gateway that checks access codes and meters nothing: no
// guest passes any byte through it. The flow benchmarks and the suites
// that play the guest's part through the API (not through a gateway) put
// it behind the real host agent; Check is what a guest's presented code
// meets.
type CodeGate struct {
	// Address is what guests are told (nothing listens there).
	Address string

	mu     sync.Mutex
	sess   map[string]*codeEntry
	events chan Event
}

type codeEntry struct {
	hash     [32]byte
	quota    int64
	verified bool
	key      ed25519.PublicKey
	acked    int64
	sig      []byte
	revoked  bool
}

var _ Gateway = (*CodeGate)(nil)

func (g *CodeGate) entry(sessionID string) (*codeEntry, error) {
	e := g.sess[sessionID]
	switch {
	case e == nil:
		return nil, fmt.Errorf("session %s: %w", sessionID, ErrUnknownSession)
	case e.revoked:
		return nil, fmt.Errorf("session %s: %w", sessionID, ErrRevoked)
	}
	return e, nil
}

// Admit implements Gateway.
func (g *CodeGate) Admit(_ context.Context, gr Grant) error {
	if err := gr.Check(); err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.sess == nil {
		g.sess = map[string]*codeEntry{}
	}
	h := sha256.Sum256(gr.Credential)
	if e := g.sess[gr.SessionID]; e != nil && !e.revoked {
		if e.hash != h {
			return fmt.Errorf("session %s: %w", gr.SessionID, ErrSessionExists)
		}
		return nil
	}
	g.sess[gr.SessionID] = &codeEntry{hash: h, quota: gr.Quota, verified: gr.Verified, key: gr.GuestKey}
	return nil
}

// Extend implements Gateway.
func (g *CodeGate) Extend(_ context.Context, sessionID string, bytes int64) error {
	if bytes <= 0 {
		return fmt.Errorf("session %s: extend by %d: %w", sessionID, bytes, ErrInvalid)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	e, err := g.entry(sessionID)
	if err != nil {
		return err
	}
	e.quota += bytes
	return nil
}

// Revoke implements Gateway.
func (g *CodeGate) Revoke(_ context.Context, sessionID string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	e := g.sess[sessionID]
	if e == nil {
		return fmt.Errorf("session %s: %w", sessionID, ErrUnknownSession)
	}
	e.revoked = true
	return nil
}

// Acknowledge implements Gateway: it checks and records the highest
// acknowledgment (see Evidence); it holds nothing back, as it passes no
// byte.
func (g *CodeGate) Acknowledge(_ context.Context, sessionID string, received int64, sig []byte) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	e, err := g.entry(sessionID)
	if err != nil {
		return err
	}
	if !e.verified {
		return fmt.Errorf("session %s: %w", sessionID, ErrUnverified)
	}
	if err := protocol.VerifyAck(e.key, sessionID, received, sig); err != nil {
		return fmt.Errorf("session %s: %v: %w", sessionID, err, ErrInvalid)
	}
	if received > e.acked {
		e.acked, e.sig = received, append([]byte(nil), sig...)
	}
	return nil
}

// Evidence implements Gateway.
func (g *CodeGate) Evidence(sessionID string) (Evidence, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	e := g.sess[sessionID]
	if e == nil {
		return Evidence{}, fmt.Errorf("session %s: %w", sessionID, ErrUnknownSession)
	}
	return Evidence{Verified: e.verified, Acked: e.acked, Signature: e.sig}, nil
}

// Usage implements Gateway: nothing is ever used. It is still readable
// after Revoke.
func (g *CodeGate) Usage(sessionID string) (used, quota int64, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	e := g.sess[sessionID]
	if e == nil {
		return 0, 0, fmt.Errorf("session %s: %w", sessionID, ErrUnknownSession)
	}
	return 0, e.quota, nil
}

// Events implements Gateway: there are none.
func (g *CodeGate) Events() <-chan Event {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.events == nil {
		g.events = make(chan Event)
	}
	return g.events
}

// Run implements Gateway: there is nothing to serve.
func (g *CodeGate) Run(ctx context.Context) error {
	<-ctx.Done()
	return nil
}

// Addr implements Gateway.
func (g *CodeGate) Addr() string { return g.Address }

// Check is what a guest's presented code meets: it returns the volume
// granted to the session if code is the session's code.
func (g *CodeGate) Check(sessionID string, code []byte) (int64, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	e, err := g.entry(sessionID)
	h := sha256.Sum256(code)
	if err != nil || subtle.ConstantTimeCompare(e.hash[:], h[:]) != 1 {
		return 0, fmt.Errorf("gateway: access code of session %s refused", sessionID)
	}
	return e.quota, nil
}

// AwaitVolume waits (up to within) until the gate admits code for the
// session with want bytes, and returns the volume it last saw. A host
// raises the gate's volume only after the server accepted its top-up grant,
// so the guest may hear of the grant a moment before the gate has it.
func (g *CodeGate) AwaitVolume(sessionID string, code []byte, want int64, within time.Duration) (int64, error) {
	deadline := time.Now().Add(within)
	for {
		vol, err := g.Check(sessionID, code)
		if (err == nil && vol == want) || time.Now().After(deadline) {
			return vol, err
		}
		time.Sleep(time.Millisecond)
	}
}
