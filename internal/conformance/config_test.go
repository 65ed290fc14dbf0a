package conformance

import (
	"github.com/sharespot/sharespot/internal/session"
)

func sessionConfig() session.Config { return session.DefaultConfig() }
