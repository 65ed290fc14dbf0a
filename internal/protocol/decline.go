package protocol

import "strings"

// DeclinedByHost begins the end reason of a session whose host turned the
// request down (Sessions.Decline before a fee): the guest tells a "no"
// from other ends by it (connect exits with the declined code).
const DeclinedByHost = "declined by host: "

// HostDeclined reports whether endReason says the host declined.
func HostDeclined(endReason string) bool { return strings.HasPrefix(endReason, DeclinedByHost) }
