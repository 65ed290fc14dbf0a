package main

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/protocol"
)

// TestImage builds the image twice from the same binary and
// SOURCE_DATE_EPOCH and gets the same digest; reads the layout back; finds
// the binary in the layer byte for byte, runs it, and checks the config.
func TestImage(t *testing.T) {
	dir := t.TempDir()
	bin, err := harness.BuildBinary(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	plat := "linux/" + runtime.GOARCH
	var digests []string
	for _, out := range []string{"a", "b"} {
		stdout := captureStdout(t, func() error {
			return run([]string{"-binary", plat + "=" + bin, "-layout", filepath.Join(dir, out), "-tarball", filepath.Join(dir, out+".tar"), "-tag", "sharespot:test"})
		})
		digests = append(digests, stdout)
	}
	if digests[0] != digests[1] || digests[0] == "" {
		t.Fatalf("two builds, two digests: %q", digests)
	}
	idx, err := layout.ImageIndexFromPath(filepath.Join(dir, "a"))
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 || im.Manifests[0].Platform.String() != plat {
		t.Fatalf("index: %+v", im.Manifests)
	}
	img, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.Config.User != "65532:65532" || !slices.Equal(cf.Config.Entrypoint, []string{"/usr/local/bin/sharespot"}) || cf.Created.Unix() != 1700000000 {
		t.Errorf("config: user %q entrypoint %v created %v", cf.Config.User, cf.Config.Entrypoint, cf.Created)
	}
	want, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	var got []byte
	tr := tar.NewReader(mutate.Extract(img))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.ModTime.Unix() != 1700000000 {
			t.Errorf("%s has mtime %v", h.Name, h.ModTime)
		}
		if h.Name == "usr/local/bin/sharespot" {
			if got, err = io.ReadAll(tr); err != nil {
				t.Fatal(err)
			}
		}
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("the layer's binary (%d bytes) is not the one built (%d bytes)", len(got), len(want))
	}
	extracted := filepath.Join(dir, "extracted")
	if err := os.WriteFile(extracted, got, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(extracted, "version").CombinedOutput(); err != nil || !bytes.Contains(out, fmt.Appendf(nil, "protocol %d", protocol.Version)) {
		t.Fatalf("the image's binary: %v %s", err, out)
	}
	// The tarball holds the same image (same config and layer; its
	// manifest is docker's).
	timg, err := tarball.ImageFromPath(filepath.Join(dir, "a.tar"), nil)
	if err != nil {
		t.Fatal(err)
	}
	c1, _ := timg.ConfigName()
	c2, _ := img.ConfigName()
	if c1 != c2 {
		t.Errorf("tarball image's config %v, layout image's %v", c1, c2)
	}
}

func captureStdout(t *testing.T, f func() error) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stdout
	os.Stdout = w
	ferr := f()
	os.Stdout = old
	w.Close()
	b, _ := io.ReadAll(r)
	if ferr != nil {
		t.Fatal(ferr)
	}
	return string(bytes.TrimSpace(b))
}
