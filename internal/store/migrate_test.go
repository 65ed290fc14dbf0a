package store

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// sumLine is a line of migrations/SHA256SUMS, as sha256sum prints it.
var sumLine = regexp.MustCompile(`^([0-9a-f]{64})  (\d{4}_\S+\.sql)$`)

// TestReleasedMigrationsUnchanged holds every migration to the SHA-256
// that migrations/SHA256SUMS recorded when it was released: a migration
// that has run on someone's database is never edited, the schema changes
// with a new file. A new migration fails the test until its line is added
// (what `sha256sum NNNN_name.sql` prints in migrations/); until it is
// merged, edit the line with it; once merged, neither changes again.
func TestReleasedMigrationsUnchanged(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("migrations", "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	released := map[string]string{}
	for i, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		m := sumLine.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("migrations/SHA256SUMS line %d: %q is not \"<sha256>  NNNN_name.sql\"", i+1, line)
		}
		if _, dup := released[m[2]]; dup {
			t.Fatalf("migrations/SHA256SUMS names %s twice", m[2])
		}
		released[m[2]] = m[1]
	}
	ms, err := migrations()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		sum := sha256.Sum256([]byte(m.sql))
		got := hex.EncodeToString(sum[:])
		want, ok := released[m.name]
		delete(released, m.name)
		switch {
		case !ok:
			t.Errorf("migration %s is not in migrations/SHA256SUMS; add its line with it:\n%s  %s", m.name, got, m.name)
		case got != want:
			t.Errorf("released migration %s changed: SHA-256 %s, released as %s; restore it and put the change in a new migration", m.name, got, want)
		}
	}
	for name := range released {
		t.Errorf("released migration %s is gone: a database that ran it would not know its successor; restore it", name)
	}
}
