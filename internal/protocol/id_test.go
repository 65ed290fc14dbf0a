package protocol

import (
	"strings"
	"testing"
)

func TestNewID(t *testing.T) {
	a, b := NewID("ses"), NewID("ses")
	if a == b || !strings.HasPrefix(a, "ses_") || len(a) != len("ses_")+26 || strings.ToLower(a) != a {
		t.Fatalf("NewID gave %q and %q", a, b)
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
