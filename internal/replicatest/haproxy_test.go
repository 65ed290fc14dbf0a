package replicatest

import (
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sharespot/sharespot/internal/bus/natstest"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/store"
	"github.com/sharespot/sharespot/internal/store/pgtest"
)

// haproxyConfig is the configuration deploy/ ships.
func haproxyConfig(t *testing.T) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "deploy", "haproxy", "haproxy.cfg")
}

// TestHAProxy runs deploy/haproxy/haproxy.cfg (the real haproxy) in front of
// two real replicas on PostgreSQL and NATS: /readyz through it, then the
// whole flow with host and guest both addressing only the load balancer,
// and replica A SIGKILLed in the middle of the flow. HAProxy's health
// check takes A out; the flow ends on B; the money audits clean.
func TestHAProxy(t *testing.T) {
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("haproxy is required in CI (apt-get install haproxy)")
		}
		t.Skip("no haproxy on this machine")
	}
	nats := natstest.Require(t)
	db := pgtest.New(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*flowBound+30*time.Second)
	defer cancel()
	rs := startReplicas(t, db, []string{"--bus", nats}, "A", "B")
	a, b := rs[0], rs[1]

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lb := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(bin, "-db", "-f", haproxyConfig(t))
	cmd.Env = append(os.Environ(), "SHARESPOT_LB_LISTEN="+lb,
		"SHARESPOT_REPLICA_A="+strings.TrimPrefix(a.URL, "http://"), "SHARESPOT_REPLICA_B="+strings.TrimPrefix(b.URL, "http://"))
	var out proc
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	defer func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("haproxy output:\n%s", out.output())
		}
	}()
	url := "http://" + lb
	hc := client.NewHTTPClient() // HTTP/2 with prior knowledge, as every client
	ready := func() int {
		res, err := hc.Get(url + "/readyz")
		if err != nil {
			return 0
		}
		res.Body.Close()
		return res.StatusCode
	}
	for end := time.Now().Add(30 * time.Second); ready() != http.StatusOK; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("/readyz through haproxy never answered 200")
		}
	}

	st, err := store.Open(ctx, db, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	f := newFlow(st, []string{url}, []string{url})
	var killed atomic.Bool
	f.midFlow = func() {
		if err := a.kill(); err != nil {
			t.Error(err)
			return
		}
		killed.Store(true)
	}
	runFlow(t, ctx, f, "flow through haproxy (replica A killed before the first grant)")
	if !killed.Load() {
		t.Fatal("replica A was not killed mid-flow")
	}
	f.check(t, ctx)
	if err := harness.Audit(ctx, st); err != nil {
		t.Fatalf("audit: %v", err)
	}
	// Only B is left: still ready through the load balancer.
	if code := ready(); code != http.StatusOK {
		t.Fatalf("/readyz through haproxy with only B up: %d", code)
	}
}
