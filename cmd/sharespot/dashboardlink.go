package main

import (
	"fmt"
	"time"
)

// DashboardLinkCmd prints a fresh sign-in link to the host's dashboard,
// as `share --dashboard` does at its start, without restarting `share`.
type DashboardLinkCmd struct {
	deviceFlags
}

// Run asks the server for a link for this device's account and prints it
// alone on stdout (for scripts), with when it expires on stderr.
func (c *DashboardLinkCmd) Run(env *runEnv) error {
	cl, err := c.connect(env, "host")
	if err != nil {
		return err
	}
	link, exp, err := cl.DashboardLink(env.ctx)
	if err != nil {
		return err
	}
	fmt.Fprintln(env.stdout, link)
	fmt.Fprintf(env.stderr, "host's dashboard: open the link above once, before %s (%s from now)\n", exp.Local().Format("15:04"), time.Until(exp).Round(time.Minute))
	return nil
}
