package registry

import (
	"fmt"
	"path/filepath"
	"slices"
	"testing"

	"github.com/sharespot/sharespot/internal/store"
	"github.com/sharespot/sharespot/internal/store/pgtest"
)

// TestPresentMany: HostingAmong names exactly the devices with an active
// hotspot among those asked, and SeenAll marks exactly their active
// hotspots, across several chunks and a padded last one, on each engine.
func TestPresentMany(t *testing.T) {
	for _, e := range []store.Engine{store.SQLite, store.Postgres} {
		t.Run(string(e), func(t *testing.T) {
			ctx := t.Context()
			target := filepath.Join(t.TempDir(), "registry.db")
			if e == store.Postgres {
				target = pgtest.New(t)
			}
			st, err := store.Open(ctx, target, store.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			// 2.5 chunks of devices: every third hosts, every ninth has
			// withdrawn its only hotspot, and "stranger" asked about has
			// never enrolled.
			const n = presentChunk*2 + presentChunk/2
			var asked, wantHosts []string
			var withdrawn []string
			err = st.Write(ctx, func(tx *store.Tx) error {
				if _, err := tx.Exec(`INSERT INTO accounts (id, created_ms) VALUES ('a', 0)`); err != nil {
					return err
				}
				for i := range n {
					id := fmt.Sprintf("d%03d", i)
					asked = append(asked, id)
					if _, err := tx.Exec(`INSERT INTO devices (id, account_id, public_key, name, created_ms) VALUES (?, 'a', ?, '', 0)`, id, []byte{byte(i), byte(i >> 8)}); err != nil {
						return err
					}
					if i%3 != 0 {
						continue
					}
					h, err := Register(tx, 1, id, instruction(i, 1<<30))
					if err != nil {
						return err
					}
					if i%9 == 0 {
						if _, err := Withdraw(tx, 2, id, h.ID); err != nil {
							return err
						}
						withdrawn = append(withdrawn, id)
						continue
					}
					wantHosts = append(wantHosts, id)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			asked = append(asked, "stranger")
			var hosts []string
			if err := st.Read(ctx, func(tx *store.Tx) (err error) { hosts, err = HostingAmong(tx, asked); return err }); err != nil {
				t.Fatal(err)
			}
			slices.Sort(hosts)
			if !slices.Equal(hosts, wantHosts) {
				t.Fatalf("HostingAmong gave %d devices %v, want %d %v", len(hosts), hosts, len(wantHosts), wantHosts)
			}
			// Mark all but the last host: exactly those move.
			if err := st.Write(ctx, func(tx *store.Tx) error { return SeenAll(tx, hosts[:len(hosts)-1], 777) }); err != nil {
				t.Fatal(err)
			}
			seen := map[string]int64{}
			err = st.Read(ctx, func(tx *store.Tx) error {
				rows, err := tx.Query(`SELECT host_device_id, seen_ms FROM hotspots`)
				if err != nil {
					return err
				}
				defer rows.Close()
				for rows.Next() {
					var id string
					var ms int64
					if err := rows.Scan(&id, &ms); err != nil {
						return err
					}
					seen[id] = ms
				}
				return rows.Err()
			})
			if err != nil {
				t.Fatal(err)
			}
			marked := 0
			for id, ms := range seen {
				want := int64(1)
				if i := slices.Index(hosts, id); i >= 0 && i < len(hosts)-1 {
					want = 777
					marked++
				}
				if ms != want {
					t.Errorf("hotspot of %s (withdrawn: %v) seen at %d, want %d", id, slices.Contains(withdrawn, id), ms, want)
				}
			}
			if marked != len(hosts)-1 {
				t.Errorf("%d hosts marked, want %d", marked, len(hosts)-1)
			}
		})
	}
}
