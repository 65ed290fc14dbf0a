package netdelay

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// TestProxyDelaysAndKeepsBytes sends a megabyte through the proxy to an
// echo server and back: it must come back whole, in order, and no sooner
// than one round trip of the proxy (a lower bound, not a timing goal).
func TestProxyDelaysAndKeepsBytes(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	const oneWay = 20 * time.Millisecond
	p, err := Listen(ln.Addr().String(), oneWay)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	want := make([]byte, 1<<20)
	for i := range want {
		want[i] = byte(i * 7)
	}
	start := time.Now()
	go func() { c.Write(want); c.(*net.TCPConn).CloseWrite() }()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("got %d bytes back, not the %d sent in order", len(got), len(want))
	}
	if d := time.Since(start); d < 2*oneWay {
		t.Fatalf("a round trip through the proxy took %v, less than twice its one-way delay of %v", d, oneWay)
	}
}

func TestProxyRefusesNegativeDelay(t *testing.T) {
	if _, err := Listen("127.0.0.1:1", -time.Millisecond); err == nil {
		t.Fatal("a negative delay was accepted")
	}
}
