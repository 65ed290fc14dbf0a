// Package protocol is what a device and the server both speak beyond the
// generated messages: the tariff's price arithmetic, the byte strings a
// device key signs (sign-in, adding a device, usage acknowledgments), the
// credit window, the forms of IDs and BSSIDs, the limits both sides check,
// and the protocol's version. It depends on nothing but the standard
// library and the generated messages, so a guest or host build links no
// server code (TestDeviceSideDeps keeps it so).
package protocol

// Version is the version of the Sharespot protocol. History
// (docs/protocol.md):
//
//	1  2026-11-24  first version: sign-in, hotspots, discovery, sessions,
//	               wallet payments with signed receipts, HPKE-sealed codes,
//	               store-and-forward inbox.
//	2  2026-11-30  fair settlement: the session's tariff, tranches, the
//	               ENDING state and the host's final count, reservation at
//	               payment, Retry-After on rate limits; AddDevice with proof
//	               of possession.
//	3  2026-11-30  card payments through Stripe: PayRequest.method, the
//	               payment status, FundByCard, PayoutOnboarding.
//	4  2026-11-30  PaymentConfirmed carries the quote and the guest, so
//	               the host's agent grants without reading the session.
//	5  2026-12-05  verified usage in a mode the guest's request fixes
//	               (usage_mode); acknowledgments in-band to the gateway
//	               over its control stream, attached by the host to its
//	               reports, prompts and final count, and the guest's last
//	               word in its End; one credit window, max(1 MB, 2 % of
//	               everything granted); the guest's device key in
//	               AccessRequested and PaymentConfirmed; the host's record
//	               in each offer.
//	6  2026-12-05  hosts that are really there: offline hotspots listed
//	               apart in discovery, never offered; the WireGuard
//	               gateway (Gateway.kind "wireguard", its public key and
//	               the tunnel's addresses; the code is the guest's key).
//	7  2026-12-07  the channel (ChannelService.Carry): a device's unary
//	               calls as messages on one bidirectional stream.
const Version = 7

// Limits both sides check.
const (
	// MaxCandidates is the most access points a guest sends in one scan.
	MaxCandidates = 256
)
