package gateway

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func sortedLoad(t *testing.T, s Store) []Record {
	t.Helper()
	recs, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(recs, func(a, b Record) int { return strings.Compare(a.SessionID, b.SessionID) })
	return recs
}

func TestFileStoreRoundTrip(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "usage.json")
	s, err := OpenFileStore(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := sortedLoad(t, s); len(got) != 0 {
		t.Fatalf("new store holds %v", got)
	}
	a := Record{SessionID: "a", Quota: 100, Used: 40, Counted: 35, Threshold: 10, Warned: true,
		Verified: true, GuestKey: bytes.Repeat([]byte{3}, 32), Acked: 30, AckSig: bytes.Repeat([]byte{4}, 64),
		Peer: "peer-of-a-gateway"}
	a.CredentialHash[0] = 0xAB
	b := Record{SessionID: "b", Quota: 5, Used: 5}
	c := Record{SessionID: "c", Quota: 7}
	if err := s.Save([]Record{a, b, c}, nil); err != nil {
		t.Fatal(err)
	}
	a.Used = 60
	if err := s.Save([]Record{a}, []string{"c", "never-there"}); err != nil {
		t.Fatal(err)
	}
	want := []Record{a, b}
	if diff := cmp.Diff(want, sortedLoad(t, s)); diff != "" {
		t.Errorf("same store (-want +got):\n%s", diff)
	}
	s2, err := OpenFileStore(path)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, sortedLoad(t, s2)); diff != "" {
		t.Errorf("reopened (-want +got):\n%s", diff)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("directory holds %d files, want only the store (temporary files left behind?)", len(entries))
	}
}

// TestFileStoreRefusesBadRecords: an inconsistent record is not saved and
// the previous state stays.
func TestFileStoreRefusesBadRecords(t *testing.T) {
	path := filepath.Join(t.TempDir(), "usage.json")
	s, err := OpenFileStore(path)
	if err != nil {
		t.Fatal(err)
	}
	good := Record{SessionID: "a", Quota: 10, Used: 1}
	if err := s.Save([]Record{good}, nil); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []Record{
		{SessionID: "", Quota: 1},
		{SessionID: "a", Quota: 10, Used: 11},
		{SessionID: "a", Quota: -1},
		{SessionID: "a", Quota: 1, Threshold: -1},
		{SessionID: "a", Quota: 1, Acked: -1},
		{SessionID: "a", Quota: 1, Verified: true},
		{SessionID: "a", Quota: 10, Used: 5, Counted: 6},
		{SessionID: "a", Quota: 10, Used: 5, Counted: -1},
	} {
		if err := s.Save([]Record{bad}, nil); err == nil {
			t.Errorf("saved %+v", bad)
		}
	}
	s2, err := OpenFileStore(path)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]Record{good}, sortedLoad(t, s2)); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// TestFileStoreRefusesCorruptFiles: a file that cannot be trusted stops
// the gateway from starting rather than starting it empty.
func TestFileStoreRefusesCorruptFiles(t *testing.T) {
	hash := strings.Repeat("00", 32)
	for name, content := range map[string]string{
		"truncated":      `{"version":1,"sessions":[{"session":"a"`,
		"version":        `{"version":2,"sessions":[]}`,
		"unknown field":  `{"version":1,"sessions":[],"extra":1}`,
		"bad hash":       `{"version":1,"sessions":[{"session":"a","credential_sha256":"zz","quota":1,"used":0}]}`,
		"used > quota":   `{"version":1,"sessions":[{"session":"a","credential_sha256":"` + hash + `","quota":1,"used":2}]}`,
		"duplicate":      `{"version":1,"sessions":[{"session":"a","credential_sha256":"` + hash + `","quota":1,"used":0},{"session":"a","credential_sha256":"` + hash + `","quota":1,"used":0}]}`,
		"not json":       "\x00\x01",
		"empty session":  `{"version":1,"sessions":[{"session":"","credential_sha256":"` + hash + `","quota":1,"used":0}]}`,
		"negative quota": `{"version":1,"sessions":[{"session":"a","credential_sha256":"` + hash + `","quota":-1,"used":0}]}`,
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "usage.json")
			if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := OpenFileStore(path); err == nil {
				t.Error("opened")
			}
		})
	}
}

func TestEventKindString(t *testing.T) {
	for k, want := range map[EventKind]string{ThresholdCrossed: "threshold-crossed", Exhausted: "exhausted", FirstTraffic: "first-traffic", Idle: "idle", 0: "unknown"} {
		if k.String() != want {
			t.Errorf("%d: %q", k, k.String())
		}
	}
}
