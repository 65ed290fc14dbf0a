//go:build linux

// The image's binary is a linux one: these tests run it, so they run on
// Linux.

package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/sharespot/sharespot/internal/protocol"
)

// TestImage builds the image the way the README says, with no -binary
// (the command builds the binary itself), then again from that binary with
// the same SOURCE_DATE_EPOCH and gets the same digest; reads the layout
// back; finds the binary and the CA bundle in the layer byte for byte;
// checks the config; and runs the layer's binary with the image's
// entrypoint, command, environment, user and working directory, as a
// container runtime would, until /healthz and /readyz answer.
func TestImage(t *testing.T) {
	dir := t.TempDir()
	ca := writeTestCA(t, dir)
	caPEM, err := os.ReadFile(ca)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	out := filepath.Join(dir, "out")
	plat := "linux/" + runtime.GOARCH
	if runtime.GOARCH == "arm" {
		plat += "/v7"
	}
	built := captureStdout(t, func() error { return run([]string{"-out", out, "-ca-bundle", ca}) })
	bin := filepath.Join(out, "linux-"+runtime.GOARCH, "sharespot")
	again := captureStdout(t, func() error {
		return run([]string{"-binary", plat + "=" + bin, "-layout", filepath.Join(dir, "again"), "-ca-bundle", ca})
	})
	if built != again || built == "" {
		t.Fatalf("two builds, two digests: %q, %q", built, again)
	}
	idx, err := layout.ImageIndexFromPath(filepath.Join(out, "oci"))
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
	c := cf.Config
	if c.User != "65532:65532" || c.WorkingDir != "/var/lib/sharespot" || cf.Created.Unix() != 1700000000 {
		t.Errorf("config: user %q workdir %q created %v", c.User, c.WorkingDir, cf.Created)
	}
	if diff := cmp.Diff([]string{"/usr/local/bin/sharespot", "server", "--insecure-plaintext"}, slices.Concat(c.Entrypoint, c.Cmd)); diff != "" {
		t.Errorf("entrypoint+cmd (-want +got):\n%s", diff)
	}
	for _, kv := range []string{"SHARESPOT_LISTEN=0.0.0.0:8474", "SHARESPOT_DATA=/var/lib/sharespot"} {
		if !slices.Contains(c.Env, kv) {
			t.Errorf("env %q lacks %s", c.Env, kv)
		}
	}
	if _, ok := c.Volumes["/var/lib/sharespot"]; !ok {
		t.Errorf("volumes %v", c.Volumes)
	}
	if d := c.Labels["org.opencontainers.image.description"]; !strings.Contains(d, "--insecure-plaintext") || !strings.Contains(d, "0.0.0.0:8474") {
		t.Errorf("the description does not say what the image runs: %q", d)
	}

	files := layerFiles(t, img)
	want, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if got := files["usr/local/bin/sharespot"]; !bytes.Equal(got.data, want) {
		t.Fatalf("the layer's binary (%d bytes) is not the one built (%d bytes)", len(got.data), len(want))
	}
	if got := files["etc/ssl/certs/ca-certificates.crt"]; !bytes.Equal(got.data, caPEM) || got.hdr.Mode != 0o644 {
		t.Errorf("the layer's CA bundle: mode %o, %d bytes; want the -ca-bundle file (%d bytes), 0644", got.hdr.Mode, len(got.data), len(caPEM))
	}
	if d := files["var/lib/sharespot"].hdr; d.Uid != 65532 || d.Gid != 65532 {
		t.Errorf("the data directory is owned by %d:%d", d.Uid, d.Gid)
	}
	if out, err := exec.Command(bin, "version").CombinedOutput(); err != nil || !bytes.Contains(out, fmt.Appendf(nil, "protocol %d", protocol.Version)) {
		t.Fatalf("the image's binary: %v %s", err, out)
	}
	// The tarball holds the same image (same config and layer; its
	// manifest is docker's).
	timg, err := tarball.ImageFromPath(filepath.Join(out, "sharespot.tar"), nil)
	if err != nil {
		t.Fatal(err)
	}
	c1, _ := timg.ConfigName()
	c2, _ := img.ConfigName()
	if c1 != c2 {
		t.Errorf("tarball image's config %v, layout image's %v", c1, c2)
	}

	t.Run("serves_as_the_image_runs", func(t *testing.T) { runAsImage(t, img) })
}

// runAsImage extracts img's layer and runs its entrypoint and command
// chrooted there, as the image's user, in its working directory, with its
// environment alone (SHARESPOT_LISTEN moved to a free port, as `docker run
// -e` would), and waits for /healthz and /readyz to answer 200; then stops
// it with the image's stop signal. Chroot and the change of user need
// root.
func runAsImage(t *testing.T, img v1.Image) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("running the image's command chrooted as its user needs root, which CI has")
		}
		t.Skip("running the image's command chrooted as its user needs root")
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	root := filepath.Join(t.TempDir(), "rootfs")
	extract(t, img, root)
	uid, gid, ok := strings.Cut(c.User, ":")
	u, err1 := strconv.ParseUint(uid, 10, 32)
	g, err2 := strconv.ParseUint(gid, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		t.Fatalf("user %q: want UID:GID", c.User)
	}
	port := freePort(t)
	env := slices.DeleteFunc(slices.Clone(c.Env), func(kv string) bool { return strings.HasPrefix(kv, "SHARESPOT_LISTEN=") })
	env = append(env, "SHARESPOT_LISTEN=0.0.0.0:"+port)
	args := slices.Concat(c.Entrypoint, c.Cmd)
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env, cmd.Dir = env, c.WorkingDir
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root, Credential: &syscall.Credential{Uid: uint32(u), Gid: uint32(g)}, Pdeathsig: syscall.SIGKILL}
	logFile, err := os.Create(filepath.Join(filepath.Dir(root), "output"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd.Stdout, cmd.Stderr = logFile, logFile
	output := func() string { b, _ := os.ReadFile(logFile.Name()); return string(b) }
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-exited
		}
	}()
	base := "http://127.0.0.1:" + port
	hc := &http.Client{Timeout: 2 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, path := range []string{"/healthz", "/readyz"} {
		for {
			resp, err := hc.Get(base + path)
			if err == nil {
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					t.Logf("%s: %s", path, bytes.TrimSpace(body))
					break
				}
				err = fmt.Errorf("%s: %s", resp.Status, body)
			}
			select {
			case werr := <-exited:
				t.Fatalf("the image's command exited (%v) before %s answered 200:\n%s", werr, path, output())
			case <-ctx.Done():
				t.Fatalf("%s did not answer 200 (last: %v):\n%s", path, err, output())
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	if !strings.Contains(output(), "listening on http://[::]:"+port) && !strings.Contains(output(), "listening on http://0.0.0.0:"+port) {
		t.Errorf("the server does not say it listens on every address, port %s:\n%s", port, output())
	}
	for _, f := range []string{"platform.key", "admin.key"} {
		if fi, err := os.Stat(filepath.Join(root, c.WorkingDir, f)); err != nil || fi.Sys().(*syscall.Stat_t).Uid != uint32(u) {
			t.Errorf("%s in the volume: %v", f, err)
		}
	}
	if c.StopSignal != "SIGTERM" {
		t.Fatalf("stop signal %q", c.StopSignal)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("the server's exit on SIGTERM: %v\n%s", err, output())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the server did not stop on SIGTERM:\n%s", output())
	}
}

// TestCABundle: the image cannot be made without CA certificates, and says
// which file and which flag.
func TestCABundle(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.crt")
	for _, tc := range []struct {
		name, bundle string
		want         []string
	}{
		{"absent", missing, []string{missing, "-ca-bundle", "ca-certificates"}},
		{"not_PEM", notPEM, []string{notPEM, "no PEM certificate"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := run([]string{"-ca-bundle", tc.bundle, "-binary", "linux/amd64=" + notPEM, "-layout", filepath.Join(dir, "oci")})
			if err == nil {
				t.Fatal("an image without a CA bundle was made")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

// TestUsage: command lines that cannot be run are usage errors (exit 2).
func TestUsage(t *testing.T) {
	ca := writeTestCA(t, t.TempDir())
	for _, args := range [][]string{
		{"-no-such-flag"},
		{"stray"},
		{"-ca-bundle", ca, "-binary", "linux/amd64=x"},                                              // nowhere to write
		{"-ca-bundle", ca, "-binary", "linux=x", "-layout", "y"},                                    // no arch
		{"-ca-bundle", ca, "-binary", "linux/amd64=x", "-binary", "linux/arm64=y", "-tarball", "z"}, // one platform a tarball
	} {
		if err := run(args); !errors.Is(err, errUsage) {
			t.Errorf("%q: %v, want a usage error", args, err)
		}
	}
}

type file struct {
	hdr  tar.Header
	data []byte
}

// layerFiles reads img's filesystem by path (no trailing slash), checking
// every entry's timestamp.
func layerFiles(t *testing.T, img v1.Image) map[string]file {
	t.Helper()
	files := map[string]file{}
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.ModTime.Unix() != 1700000000 {
			t.Errorf("%s has mtime %v", h.Name, h.ModTime)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[strings.TrimSuffix(h.Name, "/")] = file{*h, b}
	}
}

// extract writes img's filesystem under root with its modes and owners.
func extract(t *testing.T, img v1.Image, root string) {
	t.Helper()
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, f := range layerFiles(t, img) {
		p := filepath.Join(root, filepath.FromSlash(name))
		var err error
		switch f.hdr.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(p, 0o700)
		case tar.TypeReg:
			if err = os.MkdirAll(filepath.Dir(p), 0o755); err == nil {
				err = os.WriteFile(p, f.data, 0o600)
			}
		default:
			t.Fatalf("%s: type %c is not one the image should hold", name, f.hdr.Typeflag)
		}
		if err == nil {
			err = os.Lchown(p, f.hdr.Uid, f.hdr.Gid)
		}
		if err == nil {
			err = os.Chmod(p, f.hdr.FileInfo().Mode())
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// writeTestCA writes a CA bundle of one self-signed certificate made now.
func writeTestCA(t *testing.T, dir string) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "oci test CA"}, IsCA: true, BasicConstraintsValid: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port
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
