package registry

import (
	"testing"

	"github.com/sharespot/sharespot/internal/problem"
)

func TestNormalizeBSSID(t *testing.T) {
	// The form is protocol.NormalizeBSSID's (tested there); the server
	// refuses a bad one as an invalid argument.
	if got, err := NormalizeBSSID("02-5E-00-00-00-01"); err != nil || got != "02:5e:00:00:00:01" {
		t.Errorf("NormalizeBSSID = %q, %v", got, err)
	}
	if _, err := NormalizeBSSID("ff:ff:ff:ff:ff:ff"); problem.KindOf(err) != problem.Invalid {
		t.Errorf("a broadcast BSSID: %v, want an invalid argument", err)
	}
}
