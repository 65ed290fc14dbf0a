package conformance

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"log/slog"
	"sync"
	"testing"

	"github.com/sharespot/sharespot/internal/seal"
	"github.com/sharespot/sharespot/internal/server"
)

// syncBuffer is a log sink shared by the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.b.Bytes())
}

// TestCodeNeverStoredInPlaintext: claim 2 end to end — the server stores
// and relays only the sealed code. After a grant, neither the database
// files (main file and WAL) nor the server's debug logs contain the access
// code in any usual encoding, while the sealed form is there.
func TestCodeNeverStoredInPlaintext(t *testing.T) {
	logs := new(syncBuffer)
	f := newFlow(t, func(c *server.Config) {
		c.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	f.env.TapWrites(t) // PostgreSQL: keep what is written, as SQLite's files do
	ses, _, grant := f.buy(t, 100*MB)
	code, err := ses.Code(grant)
	if err != nil {
		t.Fatal(err)
	}
	if len(code) != seal.AccessCodeSize {
		t.Fatalf("code is %d bytes", len(code))
	}
	// End the session so settlement logs run too.
	if _, err := ses.End(t.Context(), "done"); err != nil {
		t.Fatal(err)
	}
	forms := map[string][]byte{
		"raw":       code,
		"base32":    []byte(seal.FormatCode(code)),
		"hex":       []byte(hex.EncodeToString(code)),
		"base64":    []byte(base64.StdEncoding.EncodeToString(code)),
		"base64url": []byte(base64.RawURLEncoding.EncodeToString(code)),
	}
	db := f.env.DatabaseBytes(t)
	if !bytes.Contains(db, grant.SealedCode.Ciphertext) {
		t.Fatal("the sealed code is not in the database files: the test would prove nothing")
	}
	if len(logs.Bytes()) == 0 {
		t.Fatal("the server logged nothing: the log check would prove nothing")
	}
	for name, b := range forms {
		if bytes.Contains(db, b) {
			t.Errorf("the access code (%s) is in the database files", name)
		}
		if bytes.Contains(logs.Bytes(), b) {
			t.Errorf("the access code (%s) is in the server's logs", name)
		}
	}
}
