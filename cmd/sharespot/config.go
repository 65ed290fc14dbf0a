package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/alecthomas/kong"

	"github.com/sharespot/sharespot/internal/size"
)

// The configuration file is JSON (kong reads JSON itself, so it costs no
// dependency). Its keys are flag names as typed on the command line. A key
// at the top applies to every command that has that flag; a key inside an
// object named for a command applies to that command only and wins over
// the top:
//
//	{
//	  "server": "http://127.0.0.1:8474",
//	  "identity": "/home/ana/.config/sharespot/guest.key",
//	  "share": {"ssid": "Cafe", "bssid": "02:5e:00:00:00:01", "price": 10, "share": "1GB"},
//	  "connect": {"buy": "5MB", "auto-topup": "5MB"},
//	  "wallet": {"history": {"limit": 50}}
//	}
//
// Precedence: flags, then environment variables, then the file, then the
// defaults. kong on its own lets a resolver win over an environment
// variable; configFile.Resolve stands back when one is set.

// configEnv names the configuration file when --config is not given.
const configEnv = "SHARESPOT_CONFIG"

// defaultConfigPath is $XDG_CONFIG_HOME/sharespot/config.json (or the
// platform's config directory).
func defaultConfigPath() string {
	dir, err := os.UserConfigDir()
	if err != nil {
		return ""
	}
	return filepath.Join(dir, "sharespot", "config.json")
}

// configPath picks the configuration file: --config FILE (or
// --config=FILE) among args, else $SHARESPOT_CONFIG, else the default. It
// reports whether the file was asked for (then it must exist).
func configPath(args []string, lookupEnv func(string) (string, bool)) (path string, explicit bool) {
	for i, a := range args {
		if a == "--" {
			break
		}
		if v, ok := strings.CutPrefix(a, "--config="); ok {
			return v, true
		}
		if a == "--config" && i+1 < len(args) {
			return args[i+1], true
		}
	}
	if v, ok := lookupEnv(configEnv); ok && v != "" {
		return v, true
	}
	return defaultConfigPath(), false
}

// configFile is a kong.Resolver over one JSON configuration file.
type configFile struct {
	path      string
	values    map[string]any
	lookupEnv func(string) (string, bool)
}

var _ kong.Resolver = (*configFile)(nil)

// loadConfig reads path. A missing file is no configuration (nil), unless
// it was asked for by name.
func loadConfig(path string, explicit bool, lookupEnv func(string) (string, bool)) (*configFile, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && !explicit {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	values := map[string]any{}
	if err := dec.Decode(&values); err != nil {
		return nil, fmt.Errorf("config %s: not a JSON object of settings: %w", path, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("config %s: more than one JSON value", path)
	}
	return &configFile{path: path, values: values, lookupEnv: lookupEnv}, nil
}

// configKey writes a flag or command name as a configuration key.
func configKey(k string) string { return strings.ReplaceAll(k, "_", "-") }

// Validate refuses keys that name no command and no flag: a typo in the
// file must not be silently ignored.
func (c *configFile) Validate(app *kong.Application) error {
	return c.validate(app.Node, c.values, "", true)
}

func (c *configFile) validate(node *kong.Node, values map[string]any, prefix string, top bool) error {
	keys := make([]string, 0, len(values))
	for k := range values {
		keys = append(keys, k)
	}
	slices.Sort(keys) // the first bad key in a stable order
	for _, k := range keys {
		v := values[k]
		name := configKey(k)
		// A key names a command when it holds an object; "server" and
		// "share" are both commands and flags.
		if child := childCommand(node, name); child != nil {
			sub, ok := v.(map[string]any)
			if ok {
				if err := c.validate(child, sub, prefix+k+".", false); err != nil {
					return err
				}
				continue
			}
			if !hasFlagAnywhere(node, name) {
				return fmt.Errorf("config %s: key %q: want an object of `sharespot %s` settings", c.path, prefix+k, child.Path())
			}
		}
		if name == "config" || name == "help" {
			return fmt.Errorf("config %s: key %q cannot be set in the file", c.path, prefix+k)
		}
		flags := flagsNamed(node, name)
		if len(flags) == 0 {
			if top {
				return fmt.Errorf("config %s: unknown key %q: no command has a flag --%s", c.path, prefix+k, name)
			}
			return fmt.Errorf("config %s: unknown key %q: `sharespot %s` has no flag --%s", c.path, prefix+k, node.Path(), name)
		}
		s, err := configValue(v)
		if err != nil {
			return fmt.Errorf("config %s: key %q: %w", c.path, prefix+k, err)
		}
		// Check the value against the flag; it is checked again, against
		// the flag of the command that runs, in Resolve.
		if err := checkFlagValue(flags[0], s); err != nil {
			return fmt.Errorf("config %s: key %q: %w", c.path, prefix+k, err)
		}
	}
	return nil
}

// checkFlagValue parses s as flag would, into a scratch value.
func checkFlagValue(flag *kong.Flag, s string) error {
	scratch := reflect.New(flag.Target.Type()).Elem()
	if err := flag.Mapper.Decode(&kong.DecodeContext{Value: flag.Value, Scan: kong.ScanFromTokens(kong.Token{Type: kong.FlagValueToken, Value: s})}, scratch); err != nil {
		return err
	}
	if flag.Enum != "" && !slices.Contains(flag.EnumSlice(), s) {
		return fmt.Errorf("%q is not one of %s", s, strings.Join(flag.EnumSlice(), ", "))
	}
	return nil
}

// flagsNamed lists the flags called name on node and the commands under it.
func flagsNamed(node *kong.Node, name string) []*kong.Flag {
	var out []*kong.Flag
	if f := flagOf(node, name); f != nil {
		out = append(out, f)
	}
	for _, ch := range node.Children {
		out = append(out, flagsNamed(ch, name)...)
	}
	return out
}

func childCommand(node *kong.Node, name string) *kong.Node {
	for _, ch := range node.Children {
		if ch.Type == kong.CommandNode && (ch.Name == name || slices.Contains(ch.Aliases, name)) {
			return ch
		}
	}
	return nil
}

func flagOf(node *kong.Node, name string) *kong.Flag {
	for _, f := range node.Flags {
		if f.Name == name {
			return f
		}
	}
	return nil
}

func hasFlagAnywhere(node *kong.Node, name string) bool { return len(flagsNamed(node, name)) > 0 }

// configValue turns a JSON value into the text a flag would be given on
// the command line.
func configValue(v any) (string, error) {
	switch v := v.(type) {
	case string:
		return v, nil
	case json.Number:
		return v.String(), nil
	case bool:
		return strconv.FormatBool(v), nil
	default:
		return "", fmt.Errorf("want a string, a number or true/false, not %s", jsonKind(v))
	}
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case []any:
		return "a list"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}

// lookup finds a flag's setting: in the object of its command (and its
// parents' objects, nearest first), then at the top. It returns the key it
// came from.
func (c *configFile) lookup(node *kong.Node, name string) (any, string, bool) {
	var chain []*kong.Node
	for n := node; n != nil && n.Type == kong.CommandNode; n = n.Parent {
		chain = append([]*kong.Node{n}, chain...)
	}
	for depth := len(chain); depth > 0; depth-- {
		m, key := c.values, ""
		ok := true
		for _, n := range chain[:depth] {
			sub, found := findKey(m, n.Name)
			obj, isObj := sub.(map[string]any)
			if !found || !isObj {
				ok = false
				break
			}
			key += n.Name + "."
			m = obj
		}
		if !ok {
			continue
		}
		if v, found := findKey(m, name); found {
			return v, key + name, true
		}
	}
	if v, found := findKey(c.values, name); found {
		if _, isObj := v.(map[string]any); !isObj {
			return v, name, true
		}
	}
	return nil, "", false
}

// findKey finds name in m, also written with underscores.
func findKey(m map[string]any, name string) (any, bool) {
	if v, ok := m[name]; ok {
		return v, true
	}
	v, ok := m[strings.ReplaceAll(name, "-", "_")]
	return v, ok
}

// Resolve gives flag its value from the file, unless one of its
// environment variables is set (the environment wins over the file).
func (c *configFile) Resolve(_ *kong.Context, parent *kong.Path, flag *kong.Flag) (any, error) {
	for _, env := range flag.Tag.Envs {
		if _, ok := c.lookupEnv(env); ok {
			return nil, nil
		}
	}
	node := parent.Node()
	if parent.App != nil {
		node = parent.App.Node
	}
	raw, key, ok := c.lookup(node, flag.Name)
	if !ok {
		return nil, nil
	}
	s, err := configValue(raw)
	if err != nil {
		return nil, fmt.Errorf("config %s: key %q: %w", c.path, key, err)
	}
	// Parse it now, so a bad value is reported with the file and key it
	// came from.
	if err := checkFlagValue(flag, s); err != nil {
		return nil, fmt.Errorf("config %s: key %q: %w", c.path, key, err)
	}
	return s, nil
}

// sizeMapper checks a flag typed as `type:"size"` (500MB, 1.5GiB) when it
// is parsed, so a bad size is reported against its flag, environment
// variable or configuration key; the field keeps the text.
func sizeMapper() kong.MapperFunc {
	return func(ctx *kong.DecodeContext, target reflect.Value) error {
		var s string
		if err := ctx.Scan.PopValueInto("size", &s); err != nil {
			return err
		}
		if s != "" {
			if _, err := size.Parse(s); err != nil {
				return err
			}
		}
		target.SetString(s)
		return nil
	}
}

// newParser builds the command line parser for cli, reading the
// configuration file that args or the environment name.
func newParser(cli *CLI, args []string, lookupEnv func(string) (string, bool), opts ...kong.Option) (*kong.Kong, error) {
	path, explicit := configPath(args, lookupEnv)
	cfg, err := loadConfig(path, explicit, lookupEnv)
	if err != nil {
		return nil, err
	}
	opts = append([]kong.Option{
		kong.Name("sharespot"),
		kong.Description("Sell spare mobile data to people nearby."),
		kong.NamedMapper("size", sizeMapper()),
		kong.Vars{"config_default": defaultConfigPath()},
	}, opts...)
	if cfg != nil {
		opts = append(opts, kong.Resolvers(cfg))
	}
	return kong.New(cli, opts...)
}
