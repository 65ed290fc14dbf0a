package atomicfile

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
)

// names lists dir's entries.
func names(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

func TestWrite(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("file modes are Unix modes")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	for _, step := range []struct {
		data string
		perm fs.FileMode
	}{
		{"first\n", 0o600},
		{"second, longer than the first\n", 0o600},
		{"s\n", 0o644}, // shorter: nothing of the old content remains
		{"", 0o600},
	} {
		if err := Write(path, []byte(step.data), step.perm); err != nil {
			t.Fatalf("Write(%q, %v): %v", step.data, step.perm, err)
		}
		b, err := os.ReadFile(path)
		if err != nil || string(b) != step.data {
			t.Fatalf("after Write(%q): read %q, %v", step.data, b, err)
		}
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm() != step.perm {
			t.Fatalf("after Write(%q, %v): mode %v, %v", step.data, step.perm, fi.Mode().Perm(), err)
		}
		if got := names(t, dir); !slices.Equal(got, []string{"state.json"}) {
			t.Fatalf("directory holds %q: temporary files left behind", got)
		}
	}
}

// A failed write leaves the old file as it was and no temporary file.
func TestWriteFailureLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	t.Run("target is a directory", func(t *testing.T) {
		target := filepath.Join(dir, "adir")
		if err := os.Mkdir(target, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := Write(target, []byte("x"), 0o600); err == nil {
			t.Fatal("wrote over a directory")
		}
		if got := names(t, dir); !slices.Equal(got, []string{"adir"}) {
			t.Errorf("directory holds %q after a failed write", got)
		}
	})
	t.Run("target is a symlink", func(t *testing.T) {
		if runtime.GOOS == "windows" {
			t.Skip("symlinks need privileges")
		}
		d := t.TempDir()
		real := filepath.Join(d, "real")
		if err := os.WriteFile(real, []byte("old"), 0o600); err != nil {
			t.Fatal(err)
		}
		link := filepath.Join(d, "link")
		if err := os.Symlink(real, link); err != nil {
			t.Fatal(err)
		}
		err := Write(link, []byte("new"), 0o600)
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Fatalf("Write over a symlink: %v, want a refusal", err)
		}
		if b, _ := os.ReadFile(real); string(b) != "old" {
			t.Errorf("the link's target now holds %q", b)
		}
		if got := names(t, d); !slices.Equal(got, []string{"link", "real"}) {
			t.Errorf("directory holds %q", got)
		}
	})
	t.Run("directory missing", func(t *testing.T) {
		if err := Write(filepath.Join(dir, "nope", "f"), []byte("x"), 0o600); err == nil {
			t.Fatal("wrote into a missing directory")
		}
	})
}

// Writers of one file at once each leave a whole file (their temporary
// names differ): the result is one of them, never a mix, and nothing else.
func TestWriteConcurrent(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cursor")
	const n = 16
	contents := make([]string, n)
	for i := range n {
		contents[i] = strings.Repeat(fmt.Sprint(i%10), 1000+i)
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { errs[i] = Write(path, []byte(contents[i]), 0o600) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("writer %d: %v", i, err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(contents, string(b)) {
		t.Errorf("the file holds %d bytes that no writer wrote whole", len(b))
	}
	if got := names(t, dir); !slices.Equal(got, []string{"cursor"}) {
		t.Errorf("directory holds %q", got)
	}
}

// A file name without a directory is written in the working directory.
func TestWriteRelative(t *testing.T) {
	t.Chdir(t.TempDir())
	if err := Write("rel", []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile("rel"); err != nil || string(b) != "x" {
		t.Fatalf("read %q, %v", b, err)
	}
}
