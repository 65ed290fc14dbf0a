package guest

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/atomicfile"
	"github.com/sharespot/sharespot/internal/seal"
)

// Saved is what a guest keeps on disk about one of its sessions, so
// that a guest restarted between paying and the grant (or while online)
// can still open its access code and go on: the session's HPKE private
// keys and, once granted, the sealed access code and the gateway. It holds
// no plaintext code; the keys open the sealed one, so the file is as
// secret as a key (mode 0600).
type Saved struct {
	SessionID    string `json:"session_id"`
	HotspotID    string `json:"hotspot_id"`
	HostDeviceID string `json:"host_device_id"`
	SSID         string `json:"ssid"`
	// WantBytes is what the guest asked for (the size of a top-up too).
	WantBytes int64 `json:"want_bytes"`
	// Keys are the session's HPKE private keys by suite.
	Keys map[seal.Suite][]byte `json:"keys"`
	// Grant is the first access response (C1.7), once it arrived.
	Grant *SavedGrant `json:"grant,omitempty"`
	// Tariff is the session's tariff (the one the guest was shown): no fee
	// above what it gives is paid.
	Tariff *sharespotv1.Tariff `json:"tariff,omitempty"`
}

// SavedGrant is the part of the access response a guest needs again.
type SavedGrant struct {
	Suite          string `json:"suite"`
	Enc            []byte `json:"enc"`
	Ciphertext     []byte `json:"ciphertext"`
	GatewayKind    string `json:"gateway_kind"`
	GatewayAddress string `json:"gateway_address"`
	GrantedBytes   int64  `json:"granted_bytes"`
}

// SaveGrant records an initial access response.
func (s *Saved) SaveGrant(g *sharespotv1.AccessGranted) {
	sc := g.GetSealedCode()
	s.Grant = &SavedGrant{Suite: sc.GetSuite(), Enc: sc.GetEnc(), Ciphertext: sc.GetCiphertext(),
		GatewayKind: g.GetGateway().GetKind(), GatewayAddress: g.GetGateway().GetAddress(), GrantedBytes: g.GetGrantedBytes()}
}

// AccessGranted rebuilds the saved access response.
func (s *Saved) AccessGranted() *sharespotv1.AccessGranted {
	if s.Grant == nil {
		return nil
	}
	g := s.Grant
	return &sharespotv1.AccessGranted{Kind: sharespotv1.QuoteKind_QUOTE_KIND_INITIAL,
		SealedCode:   &sharespotv1.SealedCode{Suite: g.Suite, Enc: g.Enc, Ciphertext: g.Ciphertext},
		Gateway:      &sharespotv1.Gateway{Kind: g.GatewayKind, Address: g.GatewayAddress},
		GrantedBytes: g.GrantedBytes, TotalGrantedBytes: g.GrantedBytes}
}

// Store keeps a guest device's sessions and inbox position in a
// directory: one file per session (session-<id>.json) and inbox.cursor,
// each replaced whole with [atomicfile.Write], so a crash leaves the old or
// the new version, never half of one.
type Store struct {
	Dir string
}

const sessionFilePrefix = "session-"

func (s *Store) sessionPath(id string) (string, error) {
	if id == "" || strings.ContainsAny(id, `/\`) || id == "." || id == ".." {
		return "", fmt.Errorf("guest: session ID %q cannot name a file", id)
	}
	return filepath.Join(s.Dir, sessionFilePrefix+id+".json"), nil
}

// Save writes a session's state.
func (s *Store) Save(gs *Saved) error {
	p, err := s.sessionPath(gs.SessionID)
	if err != nil {
		return err
	}
	b, err := json.MarshalIndent(gs, "", "  ")
	if err != nil {
		return fmt.Errorf("guest: encode guest session %s: %w", gs.SessionID, err)
	}
	if err := s.write(p, append(b, '\n')); err != nil {
		return fmt.Errorf("guest: save guest session %s: %w", gs.SessionID, err)
	}
	return nil
}

// Load reads a session's state; fs.ErrNotExist if there is none.
func (s *Store) Load(id string) (*Saved, error) {
	p, err := s.sessionPath(id)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("guest: load guest session %s: %w", id, err)
	}
	var gs Saved
	if err := json.Unmarshal(b, &gs); err != nil {
		return nil, fmt.Errorf("guest: load guest session %s from %s: %w", id, p, err)
	}
	if gs.SessionID != id {
		return nil, fmt.Errorf("guest: %s holds session %q, not %s", p, gs.SessionID, id)
	}
	return &gs, nil
}

// List returns the IDs of the sessions with saved state.
func (s *Store) List() ([]string, error) {
	entries, err := os.ReadDir(s.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("guest: list guest sessions: %w", err)
	}
	var ids []string
	for _, e := range entries {
		if id, ok := strings.CutPrefix(e.Name(), sessionFilePrefix); ok && strings.HasSuffix(id, ".json") && e.Type().IsRegular() {
			ids = append(ids, strings.TrimSuffix(id, ".json"))
		}
	}
	return ids, nil
}

// Remove forgets a finished session.
func (s *Store) Remove(id string) error {
	p, err := s.sessionPath(id)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("guest: remove guest session %s: %w", id, err)
	}
	return nil
}

// Cursor is the highest inbox sequence the guest has processed (0: none).
func (s *Store) Cursor() (uint64, error) {
	b, err := os.ReadFile(filepath.Join(s.Dir, "inbox.cursor"))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("guest: read inbox cursor: %w", err)
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("guest: inbox cursor in %s: %w", s.Dir, err)
	}
	return n, nil
}

// SaveCursor records the highest inbox sequence processed.
func (s *Store) SaveCursor(seq uint64) error {
	if err := s.write(filepath.Join(s.Dir, "inbox.cursor"), []byte(strconv.FormatUint(seq, 10)+"\n")); err != nil {
		return fmt.Errorf("guest: save inbox cursor: %w", err)
	}
	return nil
}

// write replaces path with b, atomically and 0600, creating the
// directory (0700) if needed.
func (s *Store) write(path string, b []byte) error {
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return err
	}
	return atomicfile.Write(path, b, 0o600)
}
