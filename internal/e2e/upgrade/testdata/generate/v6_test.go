package upgradefixture

// Schema 6: hosts that are really there (issue 22). The fixture's host
// plays its part by hand and keeps no inbox stream open, so the server
// does not ask whether it is there.

import (
	"github.com/sharespot/sharespot/internal/server"
	"github.com/sharespot/sharespot/internal/session"
)

func configureSchema(c *server.Config) {
	c.Session = session.DefaultConfig()
	c.Session.HostAway = 0
}
