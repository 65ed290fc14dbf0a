package session

import (
	"sync"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
)

// partiesCap bounds the sessions whose parties an engine remembers; when
// it is reached the memory starts over (a miss costs one read).
const partiesCap = 1 << 16

// parties are the facts of a session that never change once it is
// created: who hosts it, who is its guest with which device key, and
// whether the guest acknowledges. An engine remembers them from a
// request's commit, or from the first acknowledgment it checks by reading
// them (another replica's session, or after a restart), so that checking
// the next one (each usage report, prompt, end and the guest's own copies
// carry one) needs no read. Being immutable, they hold on every replica.
type parties struct {
	host, guest string
	guestKey    []byte
	mode        sharespotv1.UsageMode
}

// partiesMemo is the engine's memory of parties, by session ID.
type partiesMemo struct {
	mu sync.Mutex
	m  map[string]parties
}

func (pm *partiesMemo) get(sessionID string) (parties, bool) {
	pm.mu.Lock()
	defer pm.mu.Unlock()
	ps, ok := pm.m[sessionID]
	return ps, ok
}

func (pm *partiesMemo) put(s *row) {
	pm.mu.Lock()
	defer pm.mu.Unlock()
	if pm.m == nil || len(pm.m) >= partiesCap {
		pm.m = make(map[string]parties)
	}
	pm.m[s.ID] = parties{host: s.Host, guest: s.Guest, guestKey: s.GuestKey, mode: s.Mode}
}
