package session

import (
	"net/netip"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/problem"
	"github.com/sharespot/sharespot/internal/seal"
)

// GuestKeys are a guest's HPKE public keys, checked by CheckGuestKeys.
type GuestKeys struct{ keys []*sharespotv1.GuestKey }

// CheckGuestKeys validates the keys of an access request (outside the
// transaction: parsing keys is work the writer should not do).
func (e *Engine) CheckGuestKeys(keys []*sharespotv1.GuestKey) (GuestKeys, error) {
	if len(keys) == 0 || len(keys) > 8 {
		return GuestKeys{}, problem.Invalidf("guest_keys must hold 1 to 8 HPKE public keys, got %d", len(keys))
	}
	for i, k := range keys {
		if err := seal.CheckPublicKey(seal.Suite(k.GetSuite()), k.GetPublicKey()); err != nil {
			return GuestKeys{}, problem.Invalidf("guest_keys[%d]: %v", i, err)
		}
	}
	if _, err := e.chooseSuite(keys); err != nil {
		return GuestKeys{}, err
	}
	return GuestKeys{keys}, nil
}

// chooseSuite picks the server's most preferred suite the guest offered.
func (e *Engine) chooseSuite(keys []*sharespotv1.GuestKey) (*sharespotv1.GuestKey, error) {
	for _, want := range e.cfg.Suites {
		for _, k := range keys {
			if k.GetSuite() == string(want) {
				return k, nil
			}
		}
	}
	return nil, problem.Invalidf("none of the guest's suites is accepted by this server (accepted: %v)", e.cfg.Suites)
}

func checkSealed(sc *sharespotv1.SealedCode, suite string) error {
	switch {
	case sc == nil:
		return problem.Invalidf("sealed_code is missing: the access response must carry the sealed access code")
	case sc.Suite != suite:
		return problem.Invalidf("sealed_code uses suite %q; this session's suite is %q", sc.Suite, suite)
	case len(sc.Enc) == 0 || len(sc.Enc) > 2048:
		return problem.Invalidf("sealed_code enc must be 1 to 2048 bytes, got %d", len(sc.Enc))
	case len(sc.Ciphertext) < 17 || len(sc.Ciphertext) > 2048:
		return problem.Invalidf("sealed_code ciphertext must be 17 to 2048 bytes, got %d", len(sc.Ciphertext))
	}
	return nil
}

func checkGateway(gw *sharespotv1.Gateway) error {
	switch {
	case gw == nil:
		return problem.Invalidf("gateway is missing: tell the guest how to get online")
	case gw.Kind != "proxy" && gw.Kind != "nftables" && gw.Kind != "wireguard":
		return problem.Invalidf("gateway kind %q must be proxy, nftables or wireguard", gw.Kind)
	case len(gw.Address) == 0 || len(gw.Address) > 256:
		return problem.Invalidf("gateway address must be 1 to 256 bytes")
	case gw.Kind != "wireguard":
		if len(gw.WireguardPublicKey) > 0 || gw.TunnelAddress != "" || gw.TunnelGateway != "" {
			return problem.Invalidf("a %s gateway has no WireGuard key or tunnel addresses", gw.Kind)
		}
		return nil
	case len(gw.WireguardPublicKey) != 32:
		return problem.Invalidf("a wireguard gateway needs its 32-byte public key, got %d bytes", len(gw.WireguardPublicKey))
	}
	for _, a := range []string{gw.TunnelAddress, gw.TunnelGateway} {
		if ip, err := netip.ParseAddr(a); err != nil || !ip.Is4() {
			return problem.Invalidf("a wireguard gateway's tunnel addresses must be IPv4 addresses, got %q", a)
		}
	}
	return nil
}
