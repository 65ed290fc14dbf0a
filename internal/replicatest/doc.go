// Package replicatest runs Sharespot scaled out, as docs/deployment.md
// describes it: several `sharespot server` processes (the real binary) on
// one PostgreSQL database, with inbox wake-ups carried between them by NATS.
//
// TestReplicas puts the host on one replica and the guest on another, runs
// the whole claimed flow (claims 1–3) between them with inbox polling all
// but turned off, so that every message crossing replicas was announced
// over NATS, and SIGKILLs the guest's replica in the middle of the flow:
// the guest's client fails over to a third replica and carries on. At the
// end the money invariants hold (harness.Audit), nothing was charged twice,
// and each device handled every message of its inbox exactly once.
//
// TestBusDown runs the same flow with the bus pointing at nothing: the
// fallback poll delivers every message.
//
// TestHAProxy* run deploy/haproxy/haproxy.cfg with the real haproxy in
// front of replicas: its check with no environment, HTTP/1.1, h2c and TLS
// through it, /metrics kept internal, its log and admin socket, reloads
// with a stream open, and the flow with a replica killed.
//
// BenchmarkRelayAcrossReplicas measures host-send to guest-receive latency
// between two replicas.
//
// The tests need PostgreSQL (see pgtest) and NATS (see natstest): they skip
// where either is unreachable, and fail in CI (CI=true). The package holds
// tests only.
package replicatest
