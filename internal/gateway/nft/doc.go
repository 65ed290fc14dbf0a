// Package nft is the kernel metering gateway: Linux nftables, driven over
// netlink with github.com/google/nftables (no nft command is run). It needs
// root (CAP_NET_ADMIN) and Linux; on other systems New returns an error,
// since the package is Linux-only by nature (use package proxy there).
//
// # The table
//
// The gateway owns one table, "sharespot" of family inet (IPv4 and IPv6),
// and touches nothing else. New reconciles it to the desired state in one
// netlink batch (one atomic transaction): the base chains are created if
// missing and their rules replaced; the four binding maps are refilled;
// each stored session gets its chain, quota and counter; chains and
// objects of sessions that are no longer stored are deleted. Starting
// twice, or after a crash, converges on the same table.
//
//	forward  (hook forward, priority filter)
//	  iifname LAN  ip  saddr . ether saddr  vmap @up4     → jump g-TAG
//	  iifname LAN  ip6 saddr . ether saddr  vmap @up6     → jump g-TAG
//	  iifname LAN  drop
//	  oifname LAN  ip  daddr                vmap @down4   → jump g-TAG
//	  oifname LAN  ip6 daddr                vmap @down6   → jump g-TAG
//	  oifname LAN  drop
//	g-TAG    (one per session; TAG = 16 hex digits of SHA-256(session ID))
//	  quota name "q-TAG" (over LIMIT)  drop
//	  counter name "c-TAG"             accept
//	input    (hook input): from the LAN only the admission port, DHCP
//	         (UDP 67, 547), IPv6 router/neighbour discovery and, with
//	         Config.AllowDNS, port 53; all else from the LAN is dropped
//	postrouting (nat): oifname UPLINK masquerade
//
// With the captive portal (Config.PortalURL, Config.Garden):
//
//	forward, first: iifname LAN  ip daddr SERVER tcp dport PORT  accept
//	                oifname LAN  ip saddr SERVER tcp sport PORT  accept
//	                (one pair per walled-garden address, IPv4 or IPv6)
//	prerouting (nat): iifname LAN  tcp dport 80
//	                  ip saddr . ether saddr != @adm4 (ip6: @adm6)
//	                  redirect to the admission port
//
// adm4 and adm6 hold the admitted bindings, added and removed with the
// maps' elements. The endpoint then answers every other request with a
// redirect to PortalURL, serves the Captive Portal API at CaptivePath and
// the admission page at GET /admit; on admission the guest's port-80
// conntrack entries are deleted, so no redirected connection lingers.
//
// A guest's packets, both ways, reach its session's named quota and
// counter objects through one hash lookup in a verdict map, not through a
// linear list of per-guest rules: the forward path costs the same with 1
// or 250 guests. (google/nftables v0.3.0 cannot express objref maps —
// "quota name ip saddr map @m" — so the map jumps to a two-rule chain
// holding the session's named objects; the lookup cost is the same.)
// Upload is keyed by address and MAC, download by address (at the forward
// hook the destination MAC is not known yet). Every packet is looked up,
// established flows included, so removing a binding cuts a running
// transfer at its next packet; no conntrack flush is needed. The table
// makes no flowtable; New warns if another table in the namespace has one,
// since flows offloaded there would bypass the forward hook unmetered.
//
// # Admission
//
// Guests are admitted at an HTTP endpoint on the host's LAN address
// (Config.Listen; the input chain lets only its port through): POST /admit
// with form fields session (the session ID) and code (the access code as
// seal.FormatCode prints it). The gateway compares the SHA-256 of the code
// with the stored one in constant time, reads the guest's MAC for the
// connection's source address from the kernel's neighbour table over
// netlink (IPv4 ARP or IPv6 neighbour discovery), and adds the binding to
// the maps. A session may bind up to MaxBindings addresses (an IPv4 and
// IPv6 pair, say); an address bound to another session is refused.
// Present is the guest's side.
//
// # What is counted
//
// The IP packet length as the kernel sees it in the forward hook (skb->len:
// IP header and payload, no link-layer header), of every packet forwarded
// for the guest, both directions summed: upload before NAT, download after
// NAT reversal. TCP handshakes, ACKs and retransmissions count, as they use
// the host's uplink. A large packet made by GRO counts with its full length.
//
// # Enforcement and events
//
// The kernel quota object is the hard cap: it passes a packet only while
// the bytes it counted, that packet included, stay within its limit, so
// no byte passes beyond the limit (overshoot 0; the cut comes at most one
// packet early, and that packet passes after an extension). Since the
// quota also counts the packets it drops, its limit is raised in place
// only while it is not used up (then it has dropped nothing), and a used-up
// quota is replaced, atomically with its rules, by one starting at the
// counter's exact value (nothing passes while it is used up). See
// setLimits.
//
// Every Config.PollInterval (100 ms) the gateway reads all counters in one
// netlink dump, feeds them to each session's gateway.Meter and sends
// FirstTraffic, ThresholdCrossed (remaining below the threshold, and once
// before when at the session's rate it would last less than
// Config.TopUpTime), Exhausted (the quota refused a packet with less than a
// full-size packet left, or no progress) and Idle. Events are therefore at
// most one poll interval plus one dump late.
//
// Acknowledge records and saves the guest's acknowledged count and credit
// window, but the kernel limit is not lowered to them: see Acknowledge and
// docs/gateways.md.
//
// Extend saves the new quota, then raises the limit (or replaces the used-
// up quota object): the counter is never touched, so usage is never reset,
// and the limit never goes down, so traffic never stops; a cut-off TCP
// transfer resumes on its next retransmission.
//
// # Crash safety
//
// Like package proxy, the gateway saves ahead of use: the kernel limit is
// never above Record.Used, an upper bound saved in the store before the
// limit is raised. The lead starts at PersistAhead (4 MiB), and grows with
// the session's traffic (four polls' worth) up to 64 × PersistAhead, so a
// fast guest never waits for the disk; after a second without traffic it
// shrinks back to PersistAhead, lowered in the kernel first and in the
// store after. When the process stops or crashes
// the table stays: guests go on within the saved bound and no further. On
// restart the table's counters are exact, so admitted guests keep exactly
// their remaining quota and their bindings. If the table is gone (a
// reboot), each session starts from its saved bound — at most its lead is
// lost to the guest, nothing is given away — and guests present their
// code again. Admit, Extend and Revoke return once their change is
// durable.
//
// # Residual risks
//
// On a shared link (one Wi-Fi network, one bridge), a station that clones
// an admitted guest's IP and MAC is let through as that guest, and its
// traffic is counted against that guest's quota: the host is never
// short-changed, the victim is. Only per-guest keys close this: see
// docs/gateways.md.
package nft
