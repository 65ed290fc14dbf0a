package protocol

import (
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

func TestNewID(t *testing.T) {
	a, b := NewID("ses"), NewID("ses")
	if a == b || !strings.HasPrefix(a, "ses_") || len(a) != len("ses_")+26 || strings.ToLower(a) != a {
		t.Fatalf("NewID gave %q and %q", a, b)
	}
	for _, id := range []string{a, b} {
		if strings.Trim(id[len("ses_"):], idAlphabet) != "" {
			t.Fatalf("NewID gave %q: characters outside %q", id, idAlphabet)
		}
	}
}

// TestNewIDSortsByTime: an ID made a millisecond or more later compares
// greater, whatever the random bits, across every character's rollover
// (the RFC's own alphabet, "a…z2…7", would put "2" after "z" and fail).
func TestNewIDSortsByTime(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	base := time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)
	for range 20000 {
		t0 := base.Add(time.Duration(r.Int64N(int64(10 * 365 * 24 * time.Hour))))
		d := time.Millisecond << r.IntN(36) // 1 ms to ~2 years: every character of the time rolls over somewhere
		a, b := newIDAt("q", t0), newIDAt("q", t0.Add(d))
		if a >= b {
			t.Fatalf("ID made at %v (%s) does not sort before one made %v later (%s)", t0, a, d, b)
		}
	}
	same := map[string]bool{}
	for range 1000 {
		same[newIDAt("q", base)] = true
	}
	if len(same) != 1000 {
		t.Fatalf("1000 IDs made in one millisecond: %d distinct", len(same))
	}
}

func TestShortID(t *testing.T) {
	id := newIDAt("ses", time.Now())
	for _, c := range []struct{ in, want string }{
		{id, "ses_…" + id[len(id)-8:]},
		{"P56IOI7-MZJNU2Y-IQGDREY-DM2MGTI-MGL3BXN-PQ6W5BM-TBBZ4TJ-XZWICQ2", "P56IOI7-MZJN…"},
		{"ses_none", "ses_none"},
		{"ses_x", "ses_x"},
	} {
		if got := ShortID(c.in, 8); got != c.want {
			t.Errorf("ShortID(%q, 8) = %q, want %q", c.in, got, c.want)
		}
	}
	// Two IDs made in the same millisecond differ in their short forms.
	now := time.Now()
	if a, b := ShortID(newIDAt("ses", now), 8), ShortID(newIDAt("ses", now), 8); a == b {
		t.Fatalf("two IDs of one millisecond abbreviate alike: %s", a)
	}
}

func TestNormalizeBSSID(t *testing.T) {
	good := map[string]string{
		"02:5E:00:00:00:01":  "02:5e:00:00:00:01",
		"02-5e-00-00-00-01":  "02:5e:00:00:00:01",
		" 02:5e:00:00:00:01": "02:5e:00:00:00:01",
	}
	for in, want := range good {
		if got, err := NormalizeBSSID(in); err != nil || got != want {
			t.Errorf("NormalizeBSSID(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "02:5e:00:00:00", "zz:5e:00:00:00:01", "00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff",
		"01:00:5e:00:00:01", "02:5e:00:00:00:01:02:03"} {
		if _, err := NormalizeBSSID(bad); err == nil {
			t.Errorf("NormalizeBSSID(%q) accepted", bad)
		}
	}
}
