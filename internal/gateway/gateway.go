// Package gateway is the host's metering gateway: the part that lets a
// guest online with its access code (C1.8), counts the guest's bytes,
// enforces the granted volume exactly, tells the host when the remaining
// volume falls below the warning level (which drives the low-quota prompt,
// C1.9) and raises the volume in place after a top-up (C1.15).
//
// Two implementations sit behind [Gateway]: package proxy (userspace SOCKS5
// and HTTP CONNECT, no root, any OS) and package nft (Linux nftables:
// kernel counters and quotas, root). docs/gateways.md compares them. Both
// persist usage through a [Store] so that a restart never hands out data
// twice; [FileStore] is the file-backed one.
package gateway

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/sharespot/sharespot/internal/seal"
)

// Grant is what the host admits a session with.
type Grant struct {
	// SessionID names the session; guests present it as their user name.
	// 1 to 255 bytes, no ':' (it must fit a SOCKS5 user name and an HTTP
	// Basic user-id).
	SessionID string
	// Credential is the access code's raw bytes (seal.AccessCodeSize of
	// them); guests present it in seal.FormatCode form. The gateway keeps
	// only its SHA-256.
	Credential []byte
	// Quota is the volume granted, in bytes (> 0).
	Quota int64
	// Threshold is the warning level in bytes: when the remaining volume
	// (Quota − used) falls below it, the gateway sends ThresholdCrossed.
	// 0 disables the warning.
	Threshold int64
	// Verified: the guest acknowledges what it receives, signed with
	// GuestKey (its device key), and the gateway holds it to its last
	// acknowledgment plus the credit window (protocol.Window of the
	// quota) from the first byte.
	Verified bool
	GuestKey ed25519.PublicKey
}

// Check reports (wrapping ErrInvalid) what is wrong with a grant.
func (g Grant) Check() error {
	switch {
	case g.SessionID == "" || len(g.SessionID) > 255 || strings.ContainsAny(g.SessionID, ":\x00"):
		return fmt.Errorf("session ID must be 1–255 bytes without ':': %w", ErrInvalid)
	case len(g.Credential) != seal.AccessCodeSize:
		return fmt.Errorf("session %s: credential must be %d bytes: %w", g.SessionID, seal.AccessCodeSize, ErrInvalid)
	case g.Quota <= 0 || g.Threshold < 0:
		return fmt.Errorf("session %s: quota %d, threshold %d: %w", g.SessionID, g.Quota, g.Threshold, ErrInvalid)
	case g.Verified && len(g.GuestKey) != ed25519.PublicKeySize:
		return fmt.Errorf("session %s: a verified session needs the guest's %d-byte key: %w", g.SessionID, ed25519.PublicKeySize, ErrInvalid)
	}
	return nil
}

// EventKind says what happened to a session.
type EventKind int

// Event kinds.
const (
	// ThresholdCrossed: the remaining volume fell below the session's
	// Threshold. Sent once per crossing: again only after an Extend has
	// lifted the remaining volume back to at least Threshold. It may also
	// come once before, when at the session's current rate what is left
	// would last less than a top-up takes (Used and Quota tell which).
	ThresholdCrossed EventKind = iota + 1
	// Exhausted: used reached quota; the session's connections are closed
	// and new ones refused until an Extend.
	Exhausted
	// FirstTraffic: the session's first byte passed (the guest is online).
	FirstTraffic
	// Idle: no byte has passed for the gateway's idle period after some
	// traffic. Sent once per idle period.
	Idle
)

func (k EventKind) String() string {
	switch k {
	case ThresholdCrossed:
		return "threshold-crossed"
	case Exhausted:
		return "exhausted"
	case FirstTraffic:
		return "first-traffic"
	case Idle:
		return "idle"
	}
	return "unknown"
}

// Event reports a change in one session's metering. Used and Quota are the
// values at the moment the event happened.
type Event struct {
	Kind      EventKind
	SessionID string
	Used      int64
	Quota     int64
}

// Gateway meters and enforces each admitted session's volume.
//
// Bytes are the bytes relayed for the guest, both directions summed
// (download plus upload): payload bytes in the proxy, IP packet lengths in
// the kernel gateway; each implementation documents exactly what it
// counts. No implementation lets more than Quota bytes through, even across
// crashes and restarts.
type Gateway interface {
	// Admit lets a session in with a credential and a volume. Admitting
	// the same session again with the same credential is a no-op (usage
	// and quota are kept); with another credential it fails with
	// ErrSessionExists. It returns once the grant is durable.
	Admit(ctx context.Context, g Grant) error
	// Extend raises a session's quota by bytes in place: usage is kept,
	// live connections stay up. It returns once the new quota is durable.
	Extend(ctx context.Context, sessionID string, bytes int64) error
	// Revoke ends a session's access and cuts its live connections.
	Revoke(ctx context.Context, sessionID string) error
	// Acknowledge records a verified session's guest's signed count of
	// the bytes it received (only growing; sig its signature,
	// protocol.AckMessage): the gateway holds the session to at most the
	// credit window beyond it. It refuses a bad signature (ErrInvalid) and
	// an unverified session (ErrUnverified), and returns once the
	// acknowledgment is durable. The guest's control stream (ServeControl)
	// calls it in-band; the host agent, with what the server relays.
	Acknowledge(ctx context.Context, sessionID string, received int64, sig []byte) error
	// Evidence is what the gateway holds of a session's acknowledgments:
	// the host attaches it to its usage reports and final count.
	Evidence(sessionID string) (Evidence, error)
	// Usage returns the bytes a session has used and its quota.
	Usage(sessionID string) (used, quota int64, err error)
	// Events delivers metering events.
	Events() <-chan Event
	// Run serves guests until ctx ends.
	Run(ctx context.Context) error
	// Addr is the host:port guests reach the gateway at.
	Addr() string
}

// Tunnel is a gateway whose guests each configure a tunnel (the WireGuard
// gateway): beside the access code, the guest needs its peer's
// description.
type Tunnel interface {
	TunnelPeer(sessionID string) (TunnelPeer, error)
}

// TunnelPeer is what a guest's tunnel needs beside its access code (its
// private key).
type TunnelPeer struct {
	// PublicKey is the gateway's; Endpoint its host:port.
	PublicKey [32]byte
	Endpoint  string
	// Address is the guest's in the tunnel; Gateway the gateway's (its
	// DNS, and the control stream).
	Address, Gateway netip.Addr
}

// Errors returned (wrapped) by gateways; test with errors.Is.
var (
	// ErrUnknownSession: no session by that ID was admitted.
	ErrUnknownSession = errors.New("gateway: unknown session")
	// ErrSessionExists: the session was admitted with another credential.
	ErrSessionExists = errors.New("gateway: session already admitted with another credential")
	// ErrRevoked: the session was revoked.
	ErrRevoked = errors.New("gateway: session revoked")
	// ErrInvalid: a grant or an extension is malformed.
	ErrInvalid = errors.New("gateway: invalid argument")
	// ErrUnverified: an acknowledgment for a session whose guest chose not
	// to acknowledge (the host's count is its bill).
	ErrUnverified = errors.New("gateway: the session is unverified: acknowledgments are refused")
)

// Evidence is a session's acknowledgments as the gateway holds them.
type Evidence struct {
	// Verified: the session is verified.
	Verified bool
	// Acked is the guest's highest acknowledged count and Signature its
	// signature (0, nil before the first).
	Acked     int64
	Signature []byte
	// Held: the guest stands at its credit window below its quota (it
	// stopped acknowledging).
	Held bool
}

// Record is one session's durable metering state.
type Record struct {
	SessionID string
	// CredentialHash is the SHA-256 of the access code.
	CredentialHash [32]byte
	Quota          int64
	// Used is an upper bound on the bytes the session has used: the
	// gateway saves it before the bytes pass, so after a crash the true
	// usage is at most Used and a restarted gateway must treat all of it
	// as used.
	Used int64
	// Counted is what the gateway had counted (passed or about to) when
	// it saved Used; Used − Counted is the lead saved ahead of use, bytes
	// the guest may never have received. 0 when unknown (older files).
	Counted   int64
	Threshold int64
	// Warned: ThresholdCrossed was sent and not re-armed since.
	Warned bool
	// Verified: the guest acknowledges, signed with GuestKey; Acked is its
	// highest acknowledged count and AckSig the signature of it.
	Verified bool
	GuestKey []byte
	Acked    int64
	AckSig   []byte
	// Peer is what a gateway needs, beyond the credential's hash, to let
	// the session in again after a restart (the WireGuard gateway: the
	// guest's public key and its address in the tunnel); "" for the others.
	Peer string
}

// Store keeps metering records across restarts. Implementations must make
// each Save atomic and durable (all or nothing, on stable storage when it
// returns). A gateway serialises its calls.
type Store interface {
	// Load returns every record saved.
	Load() ([]Record, error)
	// Save upserts put and deletes the sessions named in del.
	Save(put []Record, del []string) error
}
