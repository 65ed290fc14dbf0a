package upgradefixture

// Schema 1 (commit ee7af18): no acknowledgments, no two-party close, the
// platform's keys stored in the clear (no key file), no card payments.

import (
	"testing"

	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/server"
)

func configure(*testing.T, *server.Config, string) {}

func acknowledge(*testing.T, *client.Client, string, int64) {}

func moreSessions(*testing.T, *rig) {}
