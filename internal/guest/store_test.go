package guest

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/seal"
)

// deviceKey is a guest device's key; the device ID derives from it.
func deviceKey(t *testing.T) ed25519.PrivateKey {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// guestWithKeys is the guest device with key that requested session sid: it
// holds a fresh key for every suite, as RequestAccess makes them. Nothing
// listens at its server's address; the test needs none.
func guestWithKeys(t *testing.T, key ed25519.PrivateKey, sid string) *Guest {
	t.Helper()
	g := &Guest{C: client.New("http://127.0.0.1:9", key, client.Options{}), keys: map[string]map[seal.Suite]*seal.PrivateKey{sid: {}}}
	for _, s := range seal.Suites() {
		k, err := seal.GenerateKey(s)
		if err != nil {
			t.Fatal(err)
		}
		g.keys[sid][s] = k
	}
	return g
}

// TestGuestRestartOpensCode: a guest that saved its state, was restarted
// (a new process: a new Guest with no keys in memory) and then receives
// the grant can still open its access code, with every suite.
func TestGuestRestartOpensCode(t *testing.T) {
	const sid, host = "ses_restart", "DEVHOST"
	key := deviceKey(t)
	guest := client.New("http://127.0.0.1:9", key, client.Options{}).DeviceID()
	for _, suite := range seal.Suites() {
		t.Run(string(suite), func(t *testing.T) {
			store := Store{Dir: filepath.Join(t.TempDir(), "state")}
			before := guestWithKeys(t, key, sid)
			ses := &sharespotv1.Session{Id: sid, HotspotId: "hs_1", HostDeviceId: host}
			if err := store.Save(before.SessionState(ses, "Cafe", 5_000_000)); err != nil {
				t.Fatal(err)
			}

			// The host seals the code to the key the guest sent.
			code, err := seal.NewAccessCode()
			if err != nil {
				t.Fatal(err)
			}
			sealed, err := seal.Seal(suite, before.PublicKey(sid, suite), seal.Binding{SessionID: sid, HostID: host, GuestID: guest}, code)
			if err != nil {
				t.Fatal(err)
			}
			sc := &sharespotv1.SealedCode{Suite: string(suite), Enc: sealed.Enc, Ciphertext: sealed.Ciphertext}

			after := &Guest{C: client.New("http://127.0.0.1:9", key, client.Options{})}
			if _, err := after.OpenCode(sid, host, sc); err == nil {
				t.Fatal("a guest without the saved keys opened the code")
			}
			gs, err := store.Load(sid)
			if err != nil {
				t.Fatal(err)
			}
			if gs.HotspotID != "hs_1" || gs.HostDeviceID != host || gs.SSID != "Cafe" || gs.WantBytes != 5_000_000 {
				t.Fatalf("loaded %+v", gs)
			}
			if err := after.Restore(gs); err != nil {
				t.Fatal(err)
			}
			got, err := after.OpenCode(sid, host, sc)
			if err != nil {
				t.Fatalf("restored guest cannot open its code: %v", err)
			}
			if !bytes.Equal(got, code) {
				t.Fatal("restored guest opened a different code")
			}

			// The grant saved after the restart comes back whole.
			gs.SaveGrant(&sharespotv1.AccessGranted{SealedCode: sc, Gateway: &sharespotv1.Gateway{Kind: "proxy", Address: "127.0.0.1:1080"}, GrantedBytes: 42})
			if err := store.Save(gs); err != nil {
				t.Fatal(err)
			}
			gs2, err := store.Load(sid)
			if err != nil {
				t.Fatal(err)
			}
			ag := gs2.AccessGranted()
			if ag.Gateway.Address != "127.0.0.1:1080" || ag.GrantedBytes != 42 {
				t.Fatalf("saved grant = %v", ag)
			}
			if got, err := after.OpenCode(sid, host, ag.SealedCode); err != nil || !bytes.Equal(got, code) {
				t.Fatalf("code from the saved grant: %v", err)
			}
		})
	}
}

func TestStoreFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	store := Store{Dir: dir}
	t.Run("empty", func(t *testing.T) {
		ids, err := store.List()
		if err != nil || len(ids) != 0 {
			t.Fatalf("List = %v, %v", ids, err)
		}
		if n, err := store.Cursor(); err != nil || n != 0 {
			t.Fatalf("Cursor = %d, %v", n, err)
		}
		if _, err := store.Load("ses_x"); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("Load of nothing: %v", err)
		}
	})
	t.Run("mode 0600 in a 0700 directory", func(t *testing.T) {
		g := guestWithKeys(t, deviceKey(t), "ses_a")
		if err := store.Save(g.SessionState(&sharespotv1.Session{Id: "ses_a"}, "", 1)); err != nil {
			t.Fatal(err)
		}
		if err := store.SaveCursor(17); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"session-ses_a.json", "inbox.cursor"} {
			fi, err := os.Stat(filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("%s has mode %v, want 0600", name, fi.Mode().Perm())
			}
		}
		if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("state dir: %v, %v", fi.Mode().Perm(), err)
		}
		entries, _ := os.ReadDir(dir)
		if len(entries) != 2 {
			t.Errorf("state dir holds %d files, want 2 (temporary files left behind?)", len(entries))
		}
	})
	t.Run("list, cursor, remove", func(t *testing.T) {
		if n, err := store.Cursor(); err != nil || n != 17 {
			t.Fatalf("Cursor = %d, %v", n, err)
		}
		ids, err := store.List()
		if err != nil || !slices.Equal(ids, []string{"ses_a"}) {
			t.Fatalf("List = %v, %v", ids, err)
		}
		if err := store.Remove("ses_a"); err != nil {
			t.Fatal(err)
		}
		if err := store.Remove("ses_a"); err != nil {
			t.Fatalf("second Remove: %v", err)
		}
		if ids, _ := store.List(); len(ids) != 0 {
			t.Fatalf("List after Remove = %v", ids)
		}
	})
	t.Run("bad IDs and files", func(t *testing.T) {
		for _, id := range []string{"", "../x", "a/b", ".."} {
			if err := store.Save(&Saved{SessionID: id}); err == nil {
				t.Errorf("Save(%q) accepted", id)
			}
		}
		if err := os.WriteFile(filepath.Join(dir, "session-ses_b.json"), []byte(`{"session_id": "ses_c"}`), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := store.Load("ses_b"); err == nil {
			t.Error("a file holding another session was accepted")
		}
		if err := os.WriteFile(filepath.Join(dir, "inbox.cursor"), []byte("x\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := store.Cursor(); err == nil {
			t.Error("a corrupt cursor was accepted")
		}
		gs := &Saved{SessionID: "ses_d", Keys: map[seal.Suite][]byte{seal.Suites()[0]: []byte("short")}}
		if err := (&Guest{}).Restore(gs); err == nil {
			t.Error("a malformed key was restored")
		}
	})
}
