package upgradefixture

import "github.com/sharespot/sharespot/internal/server"

// configureSchema: before schema 6 a hotspot is offered whether or not its
// host is there.
func configureSchema(*server.Config) {}
