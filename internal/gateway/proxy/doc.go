// Package proxy is the userspace metering gateway: one TCP listener that
// speaks SOCKS5 (RFC 1928, CONNECT only, with the username/password method
// of RFC 1929) and HTTP CONNECT, told apart by the first byte (0x05 is
// SOCKS5, anything else HTTP). It needs no root and runs on any OS.
//
// # Credentials
//
// A guest authenticates with user name = session ID and password = the
// access code as seal.FormatCode prints it: in SOCKS5 through RFC 1929, in
// HTTP through "Proxy-Authorization: Basic base64(session:code)". The
// gateway keeps only the SHA-256 of each code and compares hashes in
// constant time. Wrong or missing credentials get the protocol's refusal
// (SOCKS5 method 0xFF or auth status 0x01; HTTP 407), malformed or
// over-long handshakes a clean refusal (SOCKS5 reply codes; HTTP 400/431),
// and the connection is closed.
//
// # What is counted
//
// Payload bytes relayed for the guest, both directions summed: bytes
// written to the guest (download) plus bytes written to the destination
// (upload). Handshake bytes, TCP/IP headers, retransmissions and the DNS
// lookups the gateway makes for the guest are not counted. A byte counts
// when it is written to the kernel's socket buffer; a byte read from one
// side but never written to the other (the connection broke, or the quota
// ran out) is not counted.
//
// # Exact enforcement
//
// All connections of a session draw on one budget. Before a copy step a
// connection reserves budget (at most quota − used − reserved, so the sum
// of all reservations and all use never exceeds the quota), copies at most
// that many bytes, then commits what it wrote and releases the rest.
//
// On Linux, between two TCP sockets, the copy step is io.CopyN from one
// *net.TCPConn to the other, which Go runs as splice(2): no byte is copied
// through userspace (checked with strace: the relay makes splice calls and
// no read or write calls). A connection first waits for its source to have
// data queued without holding any budget (the poller, then SIOCINQ), then
// reserves at most what is queued, so a step never waits for more data
// while holding budget, and each step is committed, and its events sent,
// as soon as its bytes are written. Elsewhere, and for bytes that arrived
// with the handshake, the copy reads into a buffer first and then reserves
// budget for what it read, waiting if the rest of the budget is reserved by
// other connections.
//
// Either way no byte past the quota is ever written. When used reaches the
// quota the gateway sends Exhausted and holds the session's connections for
// Config.Grace (60 s): their copy steps wait and new connections are
// refused; an Extend within it resumes the same connections once the new
// volume is durable, and when it passes they are closed. ThresholdCrossed
// comes when quota − used first falls below the grant's threshold, and once
// before that when at the session's rate what is left would last less than
// Config.TopUpTime (gateway.Meter measures the rate). Events are sent by
// the copy step that caused them, not by polling.
//
// # Credit window
//
// From a session's first Acknowledge on, the budget also ends at the
// guest's last acknowledged count plus the session's credit window: the
// guest's forwarder counts the same payload bytes, so a guest that stops
// acknowledging gets exactly the window more, its reads stalling (nothing
// is closed) until the next acknowledgment.
//
// # Connections and destinations
//
// A connection not yet authenticated counts against a budget of its own:
// at most MaxHandshakesPerAddr (32) per source address, more being closed
// as they are accepted, and MaxHandshakes (256) in all, the oldest being
// closed to make room for a new one; it must present valid credentials
// within AuthTimeout (5 s). So one address opening connections as fast as
// it can, or many addresses holding them open, never keep a paying guest
// out: its handshake takes a round trip or two. Once authenticated, a
// connection counts against MaxConns (1024) and its session's
// MaxConnsPerSession (64), and has the rest of the handshake timeout
// (10 s from accept) to name its destination and be connected; then an
// idle timeout (no byte in either direction) that is also the write
// deadline of each step. An optional per-session rate limit (bytes per
// second, both directions together) is paid by each step after it wrote.
//
// The gateway dials only TCP, never its own listening address, and by
// default (Config.AllowDestination nil) no loopback, link-local (all of
// 169.254.0.0/16 and fe80::/10), unspecified, multicast or broadcast
// address, no cloud metadata or host endpoint (169.254.169.254,
// 169.254.170.2, fd00:ec2::254, 100.100.100.200, 168.63.129.16), and none
// of the host's own interface addresses on any port: a guest must not
// reach a service of the host's listening on 0.0.0.0 through the host's
// LAN or uplink address. The interface addresses are read on every dial,
// so an address the host gains later is refused too. gateway.LocalDestinations
// (sharespot share --allow-local) allows the host's own addresses.
//
// # Crash safety
//
// Usage survives restarts through a gateway.Store. The gateway saves, ahead
// of use, an upper bound W on each session's usage (Record.Used): a
// connection may only reserve budget below the W that is already durable,
// and the gateway raises W by a lead in the background when use gets within
// half a lead of it. The lead is a quarter second of the session's current
// rate, at least PersistAhead (default 256 KiB), at most 256 × PersistAhead
// = 64 MiB, so the copy only waits for the disk when the disk takes more
// than an eighth of a second (then the lead doubles, within the same
// bound). On restart the gateway takes W as used. Hence:
//
//   - after a crash a guest never gets more than the paid quota in total;
//   - a crash can cost a session at most its current lead of paid bytes
//     (256 KiB, or a quarter second of a faster guest's traffic, at most
//     64 MiB) — only for sessions with open connections: once a session has
//     no connections, the next save (at most 1 s later) records its exact
//     usage;
//   - Admit, Extend and Revoke return only once their change is durable;
//     Exhausted and a clean shutdown (Run returning) save exact usage.
//
// Without a Store (Config.Store nil) usage lives only in memory: for tests.
package proxy
