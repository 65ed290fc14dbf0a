package main

import (
	"context"
	"fmt"

	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/identity"
)

// DeviceCmd groups device identity commands.
type DeviceCmd struct {
	ID    DeviceIDCmd    `cmd:"" name:"id" help:"Print this device's ID (creating its key on first use)."`
	Token DeviceTokenCmd `cmd:"" help:"Sign in and print a bearer token (for curl)."`
}

// identityFlag is the device key's location.
type identityFlag struct {
	Identity string `env:"SHARESPOT_IDENTITY" help:"Device key file (default: the user's config directory)." placeholder:"FILE"`
}

func (f identityFlag) path() string {
	if f.Identity != "" {
		return f.Identity
	}
	return identity.DefaultPath()
}

// DeviceIDCmd prints the device ID.
type DeviceIDCmd struct {
	identityFlag
}

// Run prints the ID.
func (c *DeviceIDCmd) Run(env *runEnv) error {
	key, created, err := identity.LoadOrCreate(c.path())
	if err != nil {
		return err
	}
	if created {
		fmt.Fprintf(env.stderr, "created a new device key in %s\n", c.path())
	}
	fmt.Fprintln(env.stdout, identity.ID(key))
	return nil
}

// DeviceTokenCmd signs in and prints a token.
type DeviceTokenCmd struct {
	identityFlag
	Server string `default:"http://127.0.0.1:8474" env:"SHARESPOT_SERVER" help:"Server URL; several, comma-separated, are replicas tried in order."`
}

// Run signs in.
func (c *DeviceTokenCmd) Run(env *runEnv) error {
	key, _, err := identity.LoadOrCreate(c.path())
	if err != nil {
		return err
	}
	cl, err := newClient(c.Server, key, client.Options{DeviceName: "cli"})
	if err != nil {
		return err
	}
	tok, err := cl.Token(context.WithoutCancel(env.ctx))
	if err != nil {
		return fmt.Errorf("sign in to %s: %w", c.Server, err)
	}
	fmt.Fprintln(env.stdout, tok)
	return nil
}
