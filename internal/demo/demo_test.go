package demo

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestDemo runs the demo and checks it walked every claim step, moved real
// bytes through the gateway up to the exact limit, and balanced the ledger.
func TestDemo(t *testing.T) {
	var out bytes.Buffer
	o := Defaults()
	o.Dir = t.TempDir()
	if err := Run(context.Background(), &out, o); err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	s := out.String()
	for _, id := range []string{"C1.1", "C1.2", "C1.3", "C1.4", "C1.5", "C1.6", "C3.1", "C3.2", "C3.3", "C1.7", "C2.1",
		"C1.8", "C1.9", "C1.10", "C1.11", "C1.12", "C1.13", "C1.14", "C1.15"} {
		if !strings.Contains(s, "\n"+id+" ") {
			t.Errorf("the demo never printed step %s", id)
		}
	}
	for _, want := range []string{"the gateway stopped it at 50 MB of 50 MB", "all balances sum to €0.00"} {
		if !strings.Contains(s, want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
	if t.Failed() {
		t.Log(s)
	}
}
