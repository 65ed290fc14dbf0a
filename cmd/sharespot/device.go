package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/identity"
)

// DeviceCmd groups device identity commands.
type DeviceCmd struct {
	ID    DeviceIDCmd    `cmd:"" name:"id" help:"Print this device's ID (creating its key on first use, and saying so)."`
	Token DeviceTokenCmd `cmd:"" help:"Sign in and print a bearer token (for curl); the device key must exist."`
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

// key loads the device key. With create, a missing key file is created
// (mode 0600) and stderr told so: the commands a new device starts with
// (device id, scan, connect, share). Without, a missing key file is
// refused: a command that reads or changes an account's state would
// otherwise sign in a new, empty account, silently, for a typo in
// --identity.
func (f identityFlag) key(stderr io.Writer, create bool) (ed25519.PrivateKey, error) {
	p := f.path()
	if !create {
		key, err := identity.Load(p)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("no device key at %s: check --identity (or SHARESPOT_IDENTITY); this command needs the key of an existing device, and `sharespot device id --identity %s` creates a new one", p, p)
		}
		return key, err
	}
	key, created, err := identity.LoadOrCreate(p)
	if created {
		fmt.Fprintf(stderr, "created a new device key at %s\n", p)
	}
	return key, err
}

// DeviceIDCmd prints the device ID.
type DeviceIDCmd struct {
	identityFlag
	JSON bool `help:"Print the ID as JSON."`
}

// Run prints the ID.
func (c *DeviceIDCmd) Run(env *runEnv) error {
	_, serr := os.Stat(c.path())
	created := errors.Is(serr, fs.ErrNotExist)
	key, err := c.key(env.stderr, true)
	if err != nil {
		return err
	}
	if c.JSON {
		id := identity.ID(key)
		return writeJSON(env.stdout, deviceJSON{DeviceID: id.String(), ShortID: id.Short(), KeyFile: c.path(), Created: created})
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
	key, err := c.key(env.stderr, false)
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
