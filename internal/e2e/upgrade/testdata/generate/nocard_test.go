package upgradefixture

// Schema 2: no card payments yet.

import (
	"testing"

	"github.com/sharespot/sharespot/internal/server"
)

func configureCard(*testing.T, *server.Config) {}

func cardSessions(*testing.T, *rig) {}
