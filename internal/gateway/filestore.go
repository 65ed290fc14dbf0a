package gateway

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"slices"
	"sync"

	"github.com/sharespot/sharespot/internal/atomicfile"
)

// fileVersion is the FileStore format version.
const fileVersion = 1

// FileStore is a [Store] in one JSON file (mode 0600). Every Save replaces
// the whole file with [atomicfile.Write], so the file always holds either
// the old or the new state. It suits a host with a handful of live sessions.
type FileStore struct {
	path string

	mu   sync.Mutex
	recs map[string]Record
}

var _ Store = (*FileStore)(nil)

type fileDoc struct {
	Version  int          `json:"version"`
	Sessions []fileRecord `json:"sessions"`
}

type fileRecord struct {
	SessionID        string `json:"session"`
	CredentialSHA256 string `json:"credential_sha256"`
	Quota            int64  `json:"quota"`
	Used             int64  `json:"used"`
	Counted          int64  `json:"counted,omitempty"`
	Threshold        int64  `json:"threshold,omitempty"`
	Warned           bool   `json:"warned,omitempty"`
	Verified         bool   `json:"verified,omitempty"`
	GuestKey         string `json:"guest_key,omitempty"` // hex
	Acked            int64  `json:"acked,omitempty"`
	AckSig           string `json:"ack_signature,omitempty"` // hex
	Peer             string `json:"peer,omitempty"`
	// Window is what files written before the one window rule (issue 21)
	// held: read, and not used.
	Window int64 `json:"window,omitempty"`
}

// OpenFileStore opens (or, on first Save, creates) the store at path. A
// file that exists but cannot be read or is malformed is an error: starting
// without it would give the sessions in it their data again.
func OpenFileStore(path string) (*FileStore, error) {
	f := &FileStore{path: path, recs: map[string]Record{}}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return f, nil
	}
	if err != nil {
		return nil, fmt.Errorf("gateway: read store: %w", err)
	}
	var doc fileDoc
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("gateway: parse store %s: %w", path, err)
	}
	if doc.Version != fileVersion {
		return nil, fmt.Errorf("gateway: store %s has version %d, want %d", path, doc.Version, fileVersion)
	}
	for _, r := range doc.Sessions {
		rec, err := r.record()
		if err != nil {
			return nil, fmt.Errorf("gateway: store %s: %w", path, err)
		}
		if _, dup := f.recs[rec.SessionID]; dup {
			return nil, fmt.Errorf("gateway: store %s: session %q twice", path, rec.SessionID)
		}
		f.recs[rec.SessionID] = rec
	}
	return f, nil
}

func (r fileRecord) record() (Record, error) {
	rec := Record{SessionID: r.SessionID, Quota: r.Quota, Used: r.Used, Counted: r.Counted, Threshold: r.Threshold,
		Warned: r.Warned, Verified: r.Verified, Acked: r.Acked, Peer: r.Peer}
	h, err := hex.DecodeString(r.CredentialSHA256)
	if err != nil || len(h) != len(rec.CredentialHash) {
		return Record{}, fmt.Errorf("session %q: malformed credential hash", r.SessionID)
	}
	if rec.GuestKey, err = hex.DecodeString(r.GuestKey); err != nil {
		return Record{}, fmt.Errorf("session %q: malformed guest key", r.SessionID)
	}
	if rec.AckSig, err = hex.DecodeString(r.AckSig); err != nil {
		return Record{}, fmt.Errorf("session %q: malformed acknowledgment signature", r.SessionID)
	}
	if len(rec.GuestKey) == 0 {
		rec.GuestKey = nil
	}
	if len(rec.AckSig) == 0 {
		rec.AckSig = nil
	}
	copy(rec.CredentialHash[:], h)
	if err := rec.check(); err != nil {
		return Record{}, err
	}
	return rec, nil
}

func (rec Record) check() error {
	if rec.SessionID == "" {
		return errors.New("record without a session ID")
	}
	if rec.Quota < 0 || rec.Used < 0 || rec.Used > rec.Quota || rec.Counted < 0 || rec.Counted > rec.Used ||
		rec.Threshold < 0 || rec.Acked < 0 {
		return fmt.Errorf("session %q: inconsistent volumes (used %d, counted %d, quota %d, threshold %d, acknowledged %d)",
			rec.SessionID, rec.Used, rec.Counted, rec.Quota, rec.Threshold, rec.Acked)
	}
	if rec.Verified && len(rec.GuestKey) != 32 {
		return fmt.Errorf("session %q: verified without the guest's key", rec.SessionID)
	}
	return nil
}

// Load implements Store.
func (f *FileStore) Load() ([]Record, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Collect(maps.Values(f.recs)), nil
}

// Save implements Store.
func (f *FileStore) Save(put []Record, del []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	next := maps.Clone(f.recs)
	for _, id := range del {
		delete(next, id)
	}
	for _, r := range put {
		if err := r.check(); err != nil {
			return fmt.Errorf("gateway: save: %w", err)
		}
		next[r.SessionID] = r
	}
	if err := f.write(next); err != nil {
		return fmt.Errorf("gateway: save store %s: %w", f.path, err)
	}
	f.recs = next
	return nil
}

func (f *FileStore) write(recs map[string]Record) error {
	doc := fileDoc{Version: fileVersion, Sessions: []fileRecord{}}
	for _, id := range slices.Sorted(maps.Keys(recs)) {
		r := recs[id]
		doc.Sessions = append(doc.Sessions, fileRecord{
			SessionID: r.SessionID, CredentialSHA256: hex.EncodeToString(r.CredentialHash[:]),
			Quota: r.Quota, Used: r.Used, Counted: r.Counted, Threshold: r.Threshold, Warned: r.Warned,
			Verified: r.Verified, GuestKey: hex.EncodeToString(r.GuestKey), Acked: r.Acked, AckSig: hex.EncodeToString(r.AckSig),
			Peer: r.Peer,
		})
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	return atomicfile.Write(f.path, b, 0o600)
}
