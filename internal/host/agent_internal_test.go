package host

import (
	"bytes"
	"testing"

	"github.com/sharespot/sharespot/internal/seal"
)

func TestAccessCodeIsStablePerSession(t *testing.T) {
	h := &Agent{CodeKey: bytes.Repeat([]byte{7}, 32)}
	a1, a2, b := h.accessCode("ses_a"), h.accessCode("ses_a"), h.accessCode("ses_b")
	if len(a1) != seal.AccessCodeSize || !bytes.Equal(a1, a2) || bytes.Equal(a1, b) {
		t.Fatalf("codes: %x %x %x", a1, a2, b)
	}
	other := &Agent{CodeKey: bytes.Repeat([]byte{8}, 32)}
	if bytes.Equal(other.accessCode("ses_a"), a1) {
		t.Fatal("another host key gives the same code")
	}
}
