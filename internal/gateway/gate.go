package gateway

import (
	"context"
	"errors"
	"log/slog"
	"time"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
)

// gateTimeout bounds one Gate call (the store's save).
const gateTimeout = 30 * time.Second

// Gate adapts a Gateway to the host agent's gate (client.Gate's method
// set; this package does not import client).
type Gate struct {
	GW Gateway
	// Kind is what guests are told ("proxy" or "nftables").
	Kind string
	// Threshold is the warning level given to every admitted session
	// (the host's warn-at volume).
	Threshold int64
	Log       *slog.Logger
}

// NewGate returns a Gate over gw.
func NewGate(gw Gateway, kind string, threshold int64, log *slog.Logger) *Gate {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Gate{GW: gw, Kind: kind, Threshold: threshold, Log: log}
}

// Admit lets the session in with its access code and volume.
func (g *Gate) Admit(sessionID string, code []byte, bytes int64) error {
	ctx, cancel := context.WithTimeout(context.Background(), gateTimeout)
	defer cancel()
	return g.GW.Admit(ctx, Grant{SessionID: sessionID, Credential: code, Quota: bytes, Threshold: g.Threshold})
}

// Extend adds volume to the session in place.
func (g *Gate) Extend(sessionID string, bytes int64) error {
	ctx, cancel := context.WithTimeout(context.Background(), gateTimeout)
	defer cancel()
	return g.GW.Extend(ctx, sessionID, bytes)
}

// Revoke ends the session's access and cuts its connections.
func (g *Gate) Revoke(sessionID string) {
	ctx, cancel := context.WithTimeout(context.Background(), gateTimeout)
	defer cancel()
	if err := g.GW.Revoke(ctx, sessionID); err != nil && !errors.Is(err, ErrUnknownSession) {
		g.Log.Error("cannot revoke session at the gateway", "session", sessionID, "err", err)
	}
}

// Acknowledge records the guest's acknowledgment of acked bytes and the
// session's credit window at the gateway, once it is durable. A session the
// gateway no longer holds (revoked, or lost with its state) has nothing to
// hold back: that is not an error.
func (g *Gate) Acknowledge(sessionID string, acked, window int64) error {
	ctx, cancel := context.WithTimeout(context.Background(), gateTimeout)
	defer cancel()
	err := g.GW.Acknowledge(ctx, sessionID, acked, window)
	if errors.Is(err, ErrUnknownSession) || errors.Is(err, ErrRevoked) {
		g.Log.Debug("acknowledgment for a session the gateway does not hold", "session", sessionID, "err", err)
		return nil
	}
	return err
}

// Usage returns the session's used bytes and quota.
func (g *Gate) Usage(sessionID string) (used, quota int64, err error) { return g.GW.Usage(sessionID) }

// Gateway tells guests how to reach the gateway.
func (g *Gate) Gateway() *sharespotv1.Gateway {
	return &sharespotv1.Gateway{Kind: g.Kind, Address: g.GW.Addr()}
}
