package proxy

import (
	"context"
	"errors"
	"log/slog"
	"time"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/gateway"
)

// Kind is the gateway kind guests are told.
const Kind = "proxy"

// gateTimeout bounds one Gate call (the store's save).
const gateTimeout = 30 * time.Second

// Gate adapts a Proxy to the host agent's gate (client.Gate's method set;
// this package does not import client).
type Gate struct {
	P *Proxy
	// Threshold is the warning level given to every admitted session
	// (the host's warn-at volume).
	Threshold int64
	Log       *slog.Logger
}

// NewGate returns a Gate over p.
func NewGate(p *Proxy, threshold int64, log *slog.Logger) *Gate {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Gate{P: p, Threshold: threshold, Log: log}
}

// Admit lets the session in with its access code and volume.
func (g *Gate) Admit(sessionID string, code []byte, bytes int64) error {
	ctx, cancel := context.WithTimeout(context.Background(), gateTimeout)
	defer cancel()
	return g.P.Admit(ctx, gateway.Grant{SessionID: sessionID, Credential: code, Quota: bytes, Threshold: g.Threshold})
}

// Extend adds volume to the session in place.
func (g *Gate) Extend(sessionID string, bytes int64) error {
	ctx, cancel := context.WithTimeout(context.Background(), gateTimeout)
	defer cancel()
	return g.P.Extend(ctx, sessionID, bytes)
}

// Revoke ends the session's access and cuts its connections.
func (g *Gate) Revoke(sessionID string) {
	ctx, cancel := context.WithTimeout(context.Background(), gateTimeout)
	defer cancel()
	if err := g.P.Revoke(ctx, sessionID); err != nil && !errors.Is(err, gateway.ErrUnknownSession) {
		g.Log.Error("cannot revoke session at the gateway", "session", sessionID, "err", err)
	}
}

// Gateway tells guests how to reach the proxy.
func (g *Gate) Gateway() *sharespotv1.Gateway {
	return &sharespotv1.Gateway{Kind: Kind, Address: g.P.Addr()}
}
