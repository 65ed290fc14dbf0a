package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/alecthomas/kong"
)

// unsetenv clears name for this test and restores it after.
func unsetenv(t *testing.T, name string) {
	t.Helper()
	t.Setenv(name, "")
	os.Unsetenv(name)
}

// parseWith parses args with the configuration file holding config ("":
// no file) and the environment env, as the real main does.
func parseWith(t *testing.T, config string, env map[string]string, args ...string) (*CLI, error) {
	t.Helper()
	for _, name := range []string{"SHARESPOT_SERVER", "SHARESPOT_IDENTITY", configEnv, "SHARESPOT_DATA"} {
		unsetenv(t, name)
	}
	dir := t.TempDir()
	t.Setenv("XDG_CONFIG_HOME", dir) // no default file unless written below
	if config != "" {
		p := filepath.Join(dir, "sharespot.json")
		if err := os.WriteFile(p, []byte(config), 0o600); err != nil {
			t.Fatal(err)
		}
		args = append([]string{"--config", p}, args...)
	}
	for k, v := range env {
		t.Setenv(k, v)
	}
	var cli CLI
	parser, err := newParser(&cli, args, os.LookupEnv, kong.Exit(func(int) { t.Fatal("kong tried to exit") }))
	if err != nil {
		return nil, err
	}
	_, err = parser.Parse(args)
	return &cli, err
}

// TestConfigPrecedence: flags win over the environment, the environment
// over the file, the file over the defaults; within the file a command's
// own object wins over the top level.
func TestConfigPrecedence(t *testing.T) {
	const def = "http://127.0.0.1:8474"
	tests := []struct {
		name   string
		config string
		env    map[string]string
		args   []string
		server string // wallet balance's --server
	}{
		{"default", "", nil, nil, def},
		{"file top level", `{"server": "http://file:1"}`, nil, nil, "http://file:1"},
		{"file command object", `{"server": "http://file:1", "wallet": {"balance": {"server": "http://file:2"}}}`, nil, nil, "http://file:2"},
		{"file parent command object", `{"server": "http://file:1", "wallet": {"server": "http://file:3"}}`, nil, nil, "http://file:3"},
		{"env over file", `{"server": "http://file:1"}`, map[string]string{"SHARESPOT_SERVER": "http://env:1"}, nil, "http://env:1"},
		{"env over default", "", map[string]string{"SHARESPOT_SERVER": "http://env:1"}, nil, "http://env:1"},
		{"flag over env and file", `{"server": "http://file:1"}`, map[string]string{"SHARESPOT_SERVER": "http://env:1"}, []string{"--server", "http://flag:1"}, "http://flag:1"},
		{"flag over file", `{"wallet": {"balance": {"server": "http://file:2"}}}`, nil, []string{"--server=http://flag:1"}, "http://flag:1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cli, err := parseWith(t, tt.config, tt.env, append([]string{"wallet", "balance"}, tt.args...)...)
			if err != nil {
				t.Fatal(err)
			}
			if got := cli.Wallet.Balance.Server; got != tt.server {
				t.Errorf("--server = %q, want %q", got, tt.server)
			}
		})
	}
}

// TestConfigSetsCommandFlags: every kind of flag a command has can come
// from the file: strings, sizes, numbers, booleans, enums.
func TestConfigSetsCommandFlags(t *testing.T) {
	cfg := `{"identity": "/keys/me.key",
	  "share": {"ssid": "Cafe", "bssid": "02:5e:00:00:00:01", "price": 12, "share": "1.5GiB", "security": "wpa3", "allow-local": true},
	  "connect": {"buy": "500MB", "auto_topup": "5MB", "yes": true}}`
	t.Run("share", func(t *testing.T) {
		cli, err := parseWith(t, cfg, nil, "share", "--price", "20")
		if err != nil {
			t.Fatal(err)
		}
		s := cli.Share
		if s.SSID != "Cafe" || s.BSSID != "02:5e:00:00:00:01" || s.Price != 20 || s.Share != "1.5GiB" || s.Security != "wpa3" || !s.AllowLocal || s.Identity != "/keys/me.key" {
			t.Errorf("share = %+v", s)
		}
	})
	t.Run("connect", func(t *testing.T) {
		cli, err := parseWith(t, cfg, nil, "connect", "Cafe")
		if err != nil {
			t.Fatal(err)
		}
		c := cli.Connect
		if c.Buy != "500MB" || c.AutoTopUp != "5MB" || !c.Yes || c.Target != "Cafe" || c.Identity != "/keys/me.key" {
			t.Errorf("connect = %+v", c)
		}
	})
}

// TestConfigErrors: a bad file is refused with its name and the key at
// fault.
func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name   string
		config string
		args   []string
		want   []string
	}{
		{"unknown top-level key", `{"sever": "http://x"}`, []string{"wallet", "balance"}, []string{"sharespot.json", `unknown key "sever"`}},
		{"unknown key in a command", `{"share": {"sssid": "Cafe"}}`, []string{"wallet", "balance"}, []string{"sharespot.json", `unknown key "share.sssid"`, "sharespot share"}},
		{"flag of another command", `{"connect": {"price": 10}}`, []string{"wallet", "balance"}, []string{`unknown key "connect.price"`}},
		{"command setting not an object", `{"wallet": "yes"}`, []string{"wallet", "balance"}, []string{`key "wallet"`, "object"}},
		{"bad value for a flag of another command", `{"share": {"price": "ten"}}`, []string{"wallet", "balance"}, []string{`key "share.price"`}},
		{"bad size", `{"connect": {"buy": "lots"}}`, []string{"connect", "Cafe"}, []string{"sharespot.json", `key "connect.buy"`, `size "lots"`}},
		{"bad number", `{"share": {"price": "ten"}}`, []string{"share", "--ssid", "a", "--bssid", "b", "--share", "1GB"}, []string{"sharespot.json", `key "share.price"`}},
		{"bad enum", `{"share": {"security": "wpa9"}}`, []string{"share", "--ssid", "a", "--bssid", "b", "--price", "1", "--share", "1GB"}, []string{`key "share.security"`, "wpa9"}},
		{"list value", `{"server": ["a", "b"]}`, []string{"wallet", "balance"}, []string{`key "server"`, "a list"}},
		{"not JSON", `server = "x"`, []string{"wallet", "balance"}, []string{"sharespot.json", "not a JSON object"}},
		{"config in config", `{"config": "other.json"}`, []string{"wallet", "balance"}, []string{`key "config"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseWith(t, tt.config, nil, tt.args...)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
	t.Run("named file missing", func(t *testing.T) {
		_, err := parseWith(t, "", nil, "--config", filepath.Join(t.TempDir(), "nope.json"), "wallet", "balance")
		if err == nil || !strings.Contains(err.Error(), "nope.json") {
			t.Fatalf("err = %v, want one naming nope.json", err)
		}
	})
	t.Run("default file missing is fine", func(t *testing.T) {
		if _, err := parseWith(t, "", nil, "wallet", "balance"); err != nil {
			t.Fatal(err)
		}
	})
}

func TestConfigPath(t *testing.T) {
	env := func(m map[string]string) func(string) (string, bool) {
		return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
	}
	tests := []struct {
		name     string
		args     []string
		env      map[string]string
		want     string
		explicit bool
	}{
		{"flag", []string{"scan", "--config", "a.json"}, map[string]string{configEnv: "b.json"}, "a.json", true},
		{"flag with =", []string{"--config=a.json", "scan"}, nil, "a.json", true},
		{"env", []string{"scan"}, map[string]string{configEnv: "b.json"}, "b.json", true},
		{"after --", []string{"connect", "--", "--config", "a.json"}, nil, defaultConfigPath(), false},
		{"default", []string{"scan"}, nil, defaultConfigPath(), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, explicit := configPath(tt.args, env(tt.env))
			if got != tt.want || explicit != tt.explicit {
				t.Errorf("configPath = %q, %v; want %q, %v", got, explicit, tt.want, tt.explicit)
			}
		})
	}
}
