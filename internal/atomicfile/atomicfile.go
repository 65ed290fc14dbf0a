// Package atomicfile replaces small state files whole: after a crash or a
// power loss a file holds either its old or its new content, never part of
// either. The host's gateway usage, the host's and the guest's inbox
// cursors and the guest's session keys are all written this way.
package atomicfile

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// Write replaces the file at path with data, with mode perm (whatever the
// umask): it writes a temporary file with a unique name in the same
// directory, syncs it, renames it over path and syncs the directory, so the
// rename itself survives a power loss. On failure the temporary file is
// removed and path is left as it was, unless the rename happened and only
// the directory sync failed. The directory must exist. A path that exists
// and is not a regular file is refused.
func Write(path string, data []byte, perm fs.FileMode) (err error) {
	if fi, err := os.Lstat(path); err == nil && !fi.Mode().IsRegular() {
		return fmt.Errorf("atomicfile: %s is not a regular file (%v)", path, fi.Mode().Type())
	}
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("atomicfile: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(perm); err != nil {
		return fmt.Errorf("atomicfile: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("atomicfile: write %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("atomicfile: sync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("atomicfile: close %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("atomicfile: %w", err)
	}
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("atomicfile: sync directory %s: %w", dir, err)
	}
	return nil
}

// syncDir makes a rename in dir durable. Not every OS can sync a
// directory; where it cannot, the rename is as durable as the OS makes it.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) && !errors.Is(err, errors.ErrUnsupported) {
		return err
	}
	return nil
}

// LoadOrCreateSecret reads an n-byte secret from path, creating it (n
// random bytes, mode 0600, created exclusively so that two processes
// starting together agree on one, then synced with its directory) on first
// use. A file of another size is an error.
func LoadOrCreateSecret(path string, n int) ([]byte, error) {
	for attempt := 0; attempt < 40; attempt++ {
		b, err := os.ReadFile(path)
		if err == nil && len(b) == 0 && attempt < 39 {
			time.Sleep(50 * time.Millisecond) // being written by whoever created it
			continue
		}
		if err == nil {
			if len(b) != n {
				return nil, fmt.Errorf("atomicfile: %s holds %d bytes, want %d", path, len(b), n)
			}
			return b, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("atomicfile: %w", err)
		}
		b = make([]byte, n)
		rand.Read(b)
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, fs.ErrExist) {
			continue // another process made it first: read theirs
		}
		if err != nil {
			return nil, fmt.Errorf("atomicfile: %w", err)
		}
		if _, err := f.Write(b); err != nil {
			f.Close()
			os.Remove(path)
			return nil, fmt.Errorf("atomicfile: write %s: %w", path, err)
		}
		if err := f.Sync(); err != nil {
			f.Close()
			os.Remove(path)
			return nil, fmt.Errorf("atomicfile: write %s: %w", path, err)
		}
		if err := f.Close(); err != nil {
			return nil, fmt.Errorf("atomicfile: write %s: %w", path, err)
		}
		return b, syncDir(filepath.Dir(path))
	}
	return nil, fmt.Errorf("atomicfile: %s appears and disappears", path)
}
