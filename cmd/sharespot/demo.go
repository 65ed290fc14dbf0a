//go:build !device

package main

import (
	"github.com/sharespot/sharespot/internal/demo"
	"github.com/sharespot/sharespot/internal/size"
)

// DemoCmd runs the whole flow on this machine.
type DemoCmd struct {
	Buy   string `default:"20MB" help:"First purchase."`
	TopUp string `name:"topup" default:"30MB" help:"Additional data bought at the low-quota prompt."`
	Warn  string `default:"3MB" help:"The host's low-quota threshold."`
	Data  string `help:"Keep the demo's database and gateway state in DIR (default: a temporary directory, removed)." placeholder:"DIR"`
}

// Run runs the demo.
func (c *DemoCmd) Run(env *runEnv) error {
	o := demo.Options{Dir: c.Data}
	var err error
	if o.Buy, err = size.Parse(c.Buy); err != nil {
		return err
	}
	if o.TopUp, err = size.Parse(c.TopUp); err != nil {
		return err
	}
	if o.Warn, err = size.Parse(c.Warn); err != nil {
		return err
	}
	return demo.Run(env.ctx, env.stdout, o)
}
