//go:build unix

package atomicfile

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// The mode is the one asked for, whatever the umask: a 0600 file is never
// readable by others, even for a moment, and a 0644 one is readable.
func TestWriteModeIgnoresUmask(t *testing.T) {
	for _, mask := range []int{0o077, 0o022, 0} {
		t.Run(fmt.Sprintf("umask %04o", mask), func(t *testing.T) {
			old := syscall.Umask(mask) // the process's: no parallel tests here
			defer syscall.Umask(old)
			dir := t.TempDir()
			for _, perm := range []fs.FileMode{0o600, 0o640, 0o644} {
				path := filepath.Join(dir, fmt.Sprintf("f%o", perm))
				if err := Write(path, []byte("x"), perm); err != nil {
					t.Fatal(err)
				}
				if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != perm {
					t.Errorf("Write with %v: mode %v, %v", perm, fi.Mode().Perm(), err)
				}
			}
		})
	}
}
