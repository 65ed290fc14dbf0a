package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// BuildBinary builds cmd/sharespot to dir/sharespot, for tests that run the
// real binary as separate processes, and returns its path.
func BuildBinary(dir string) (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("harness: go env GOMOD: %w", err)
	}
	bin := filepath.Join(dir, "sharespot")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/sharespot")
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(out)))
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("harness: build sharespot: %v\n%s", err, out)
	}
	return bin, nil
}

// CleanEnv is the process environment without Sharespot's own variables,
// so a child process is configured by its flags alone.
func CleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SHARESPOT_") {
			env = append(env, kv)
		}
	}
	return env
}
