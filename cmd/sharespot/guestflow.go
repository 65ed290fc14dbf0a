package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/guest"
	"github.com/sharespot/sharespot/internal/protocol"
	"github.com/sharespot/sharespot/internal/size"
)

// guestStateFlags choose where a guest keeps its sessions' keys.
type guestStateFlags struct {
	State  string `env:"SHARESPOT_STATE" help:"Directory for the guest's persisted sessions (keys, access response, inbox position); default: $XDG_STATE_HOME/sharespot/guest-<key file name> (~/.local/state/sharespot/… when XDG_STATE_HOME is not set)." placeholder:"DIR"`
	Resume bool   `help:"Resume this device's live session (a restarted connect does so by itself when one exists); fail if there is none."`
}

// stateDir is --state, or a directory per device key in the user's state
// directory: $XDG_STATE_HOME/sharespot/guest-<key file name>, with
// ~/.local/state for XDG_STATE_HOME when it is not set (so a key in the
// working directory leaves no state there). A directory an earlier
// version kept beside the key (<key>.state, when XDG_STATE_HOME was not
// set) is still used while it exists: a live session in it resumes.
func (f guestStateFlags) stateDir(keyPath string) string {
	if f.State != "" {
		return f.State
	}
	name := "guest-" + filepath.Base(keyPath)
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "sharespot", name)
	}
	old := filepath.Join(filepath.Dir(keyPath), name+".state")
	home, err := os.UserHomeDir()
	if _, serr := os.Stat(old); serr == nil || err != nil || home == "" {
		return old
	}
	return filepath.Join(home, ".local", "state", "sharespot", name)
}

// begin returns the session to go on with: this device's live session,
// resumed from its saved state, or a new one on target (C1.5–C1.6).
func (c *ConnectCmd) begin(ctx context.Context, out io.Writer, g *guest.Guest) (*guest.Session, error) {
	res, err := g.Resume(ctx)
	if err != nil {
		return nil, err
	}
	for _, e := range res.Ended {
		fmt.Fprintf(out, "ended session %s: %s\n", e.Session.Id, e.Reason)
	}
	for _, s := range res.Away {
		fmt.Fprintf(out, "session %s ended while you were away (%s): %s\n", s.Id, client.SafeText(s.EndReason), settlement(s))
	}
	if s := res.Session; s != nil {
		fmt.Fprintf(out, "resuming session %s on %q (%s asked)\n", s.ID, s.SSID, size.Format(s.Want))
		return s, nil
	}
	if c.Resume {
		return nil, errors.New("--resume: this device has no live session to resume")
	}
	if c.Target == "" {
		return nil, errors.New("name the hotspot to connect to (its SSID or BSSID; `sharespot scan` lists them)")
	}
	want, err := size.Parse(c.Buy)
	if err != nil {
		return nil, fmt.Errorf("--buy: %w", err)
	}
	found, err := discover(ctx, g.C, c.scanFlags)
	if err != nil {
		return nil, err
	}
	offer := pick(found.Available, c.Target, (*sharespotv1.Offer).GetAccessPoint)
	if off := pick(found.Offline, c.Target, (*sharespotv1.OfflineHotspot).GetAccessPoint); offer == nil && off != nil {
		return nil, fmt.Errorf("the host of %s is offline (%s): it cannot sell now; choose another hotspot (`sharespot scan` lists them)",
			client.SSIDText(off.AccessPoint.Ssid), lastThere(off.SeenUnixMs))
	}
	if offer == nil {
		return nil, fmt.Errorf("no Sharespot hotspot %q in range; `sharespot scan` lists them", c.Target)
	}
	s, err := g.Begin(ctx, offer, want) // C1.5–C1.6, at the tariff shown (C1.4)
	if err != nil {
		return nil, fmt.Errorf("request access: %w", err)
	}
	fmt.Fprintf(out, "asked %q for %s\n", s.SSID, size.Format(want))
	return s, nil
}

// settlement says what a session used, paid and got back.
func settlement(s *sharespotv1.Session) string {
	return fmt.Sprintf("used %s of %s; paid %s, refunded %s", size.Format(s.UsedBytes), size.Format(s.GrantedBytes),
		client.FormatMoney(s.PaidMinor, s.Currency), client.FormatMoney(s.RefundedMinor, s.Currency))
}

// pick finds an offer by SSID or BSSID.
func pick[T any](items []T, target string, ap func(T) *sharespotv1.AccessPoint) T {
	if b, err := protocol.NormalizeBSSID(target); err == nil {
		for _, o := range items {
			if ap(o).GetBssid() == b {
				return o
			}
		}
	}
	for _, o := range items {
		if ssid := ap(o).GetSsid(); string(ssid) == target || client.SSIDText(ssid) == target {
			return o
		}
	}
	var none T
	return none
}

// lastThere says when an offline hotspot's host was last there.
func lastThere(ms int64) string {
	if ms <= 0 {
		return "not seen since it registered"
	}
	return "last there " + time.Since(time.UnixMilli(ms)).Round(time.Second).String() + " ago"
}
