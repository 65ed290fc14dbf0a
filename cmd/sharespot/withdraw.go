package main

import (
	"errors"
	"fmt"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/protocol"
)

// WithdrawCmd stops offering this device's hotspots.
type WithdrawCmd struct {
	deviceFlags
	BSSID string `arg:"" optional:"" help:"The hotspot's BSSID (default: every hotspot this device offers)."`
}

// Run withdraws the hotspot (or all of this device's) and says which.
// Sessions running on it go on until they end.
func (c *WithdrawCmd) Run(env *runEnv) error {
	var want string
	if c.BSSID != "" {
		b, err := protocol.NormalizeBSSID(c.BSSID)
		if err != nil {
			return fmt.Errorf("BSSID %q: %w", c.BSSID, err)
		}
		want = b
	}
	cl, err := c.connect(env, "host")
	if err != nil {
		return err
	}
	list, err := cl.Hotspots.List(env.ctx, connect.NewRequest(&sharespotv1.ListRequest{}))
	if err != nil {
		return err
	}
	n := 0
	for _, h := range list.Msg.Hotspots {
		ap := h.Instruction.GetAccessPoint()
		if !h.Active || want != "" && ap.GetBssid() != want {
			continue
		}
		if _, err := cl.Hotspots.Withdraw(env.ctx, connect.NewRequest(&sharespotv1.WithdrawRequest{HotspotId: h.Id})); err != nil {
			return fmt.Errorf("withdraw %s: %w", ap.GetBssid(), err)
		}
		fmt.Fprintf(env.stdout, "withdrew %s (%s): no longer offered; sessions running on it go on until they end\n", client.SSIDText(ap.GetSsid()), ap.GetBssid())
		n++
	}
	switch {
	case n == 0 && want != "":
		return fmt.Errorf("this device offers no hotspot %s (`sharespot share` registers one)", want)
	case n == 0:
		return errors.New("this device offers no hotspot")
	}
	return nil
}
