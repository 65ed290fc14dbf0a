package protocol

import (
	"fmt"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
)

// RecordText says how a host's counts compared with its guests'
// acknowledgments in its settled verified sessions: what a guest knows of
// it before paying (and all it has to go on in an unverified session).
// `scan`, the guest page and the dashboard say it the same way.
func RecordText(r *sharespotv1.HostRecord) string {
	switch {
	case r.GetVerifiedSessions() == 0:
		return "no verified sessions yet"
	case r.GetOverCountedSessions() == 0:
		return fmt.Sprintf("%d verified sessions, never over-counted", r.GetVerifiedSessions())
	}
	return fmt.Sprintf("%d verified sessions, over-counted in %d", r.GetVerifiedSessions(), r.GetOverCountedSessions())
}
