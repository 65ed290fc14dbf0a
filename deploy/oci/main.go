// Command oci builds Sharespot's OCI image without a container daemon or
// a Dockerfile: one layer holding the static binary, the build machine's
// CA bundle (the server reaches Stripe and PostgreSQL over TLS) and an
// empty data directory owned by the image's user, on an empty base,
// written as an OCI image layout (a multi-platform index) and, for one
// platform, as a tarball that `docker load` and `podman load` read.
// Offline, and reproducible: every timestamp is SOURCE_DATE_EPOCH (default
// 0), so the same binaries and CA bundle give the same digests.
//
// The image starts a server that serves: cleartext HTTP/2 on
// 0.0.0.0:8474 (for a TLS-terminating load balancer in front), SQLite and
// the key files in the volume /var/lib/sharespot.
//
// With no flags it builds the binary for linux and this machine's
// architecture itself and writes out/oci and out/sharespot.tar:
//
//	go run ./deploy/oci
//
// For a release, build the binaries and name them:
//
//	CGO_ENABLED=0 GOOS=linux GOARCH=amd64 go build -trimpath -o out/amd64/sharespot ./cmd/sharespot
//	CGO_ENABLED=0 GOOS=linux GOARCH=arm64 go build -trimpath -o out/arm64/sharespot ./cmd/sharespot
//	go run ./deploy/oci -layout out/oci -binary linux/amd64=out/amd64/sharespot -binary linux/arm64=out/arm64/sharespot
//	go run ./deploy/oci -tarball out/sharespot-amd64.tar -tag sharespot:dev -binary linux/amd64=out/amd64/sharespot
package main

import (
	"archive/tar"
	"bytes"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

const (
	// UID is the image's user (and group): not root.
	UID = 65532
	// DataDir is the image's volume: the server's SQLite database,
	// platform.key and admin.key.
	DataDir = "/var/lib/sharespot"
	// Listen is where the image's server listens.
	Listen = "0.0.0.0:8474"
	// CABundle is where the CA bundle is, on the build machine (by
	// default) and in the image (where Go's crypto/x509 looks first).
	CABundle = "/etc/ssl/certs/ca-certificates.crt"
	// Package is what the image runs.
	Package = "github.com/sharespot/sharespot/cmd/sharespot"
)

// Entrypoint and Cmd are the image's default: `sharespot server
// --insecure-plaintext`, listening on Listen with its data in DataDir
// (SHARESPOT_LISTEN and SHARESPOT_DATA in the image's environment, so a
// command given at `docker run`, such as `server --tls-cert … --tls-key
// …`, keeps them).
var (
	Entrypoint = []string{"/usr/local/bin/sharespot"}
	Cmd        = []string{"server", "--insecure-plaintext"}
)

// description is the image's org.opencontainers.image.description.
const description = "Sharespot server. Default: `sharespot server --insecure-plaintext`, cleartext HTTP/2 (h2c) " +
	"and HTTP/1.1 on " + Listen + " (SHARESPOT_LISTEN) for a TLS-terminating load balancer in front; " +
	"SQLite, platform.key and admin.key in the volume " + DataDir + " (SHARESPOT_DATA), owned by user 65532. " +
	"TLS at the container instead: command `server --tls-cert FILE --tls-key FILE`. " +
	"PostgreSQL: SHARESPOT_DB=postgres://…; replicas of one database share platform.key and admin.key. " +
	"Health: GET /healthz, readiness: GET /readyz. CA bundle: " + CABundle + "."

type binaries []string

func (b *binaries) String() string     { return strings.Join(*b, ",") }
func (b *binaries) Set(s string) error { *b = append(*b, s); return nil }

// errUsage is a command line that cannot be run: exit 2.
var errUsage = errors.New("usage")

func main() {
	err := run(os.Args[1:])
	switch {
	case errors.Is(err, flag.ErrHelp):
	case errors.Is(err, errUsage):
		fmt.Fprintln(os.Stderr, "oci:", err)
		os.Exit(2)
	case err != nil:
		fmt.Fprintln(os.Stderr, "oci:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("oci", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: go run ./deploy/oci [flags]\n\n"+
			"With no -binary, builds %s for linux/%s (CGO_ENABLED=0 -trimpath) into -out, and with no\n"+
			"-layout or -tarball writes -out/oci and -out/sharespot.tar.\n\n", Package, runtime.GOARCH)
		fs.PrintDefaults()
	}
	var bins binaries
	fs.Var(&bins, "binary", "os/arch=PATH of a sharespot binary (static: CGO_ENABLED=0); repeat per platform (default: build one for linux/"+runtime.GOARCH+")")
	out := fs.String("out", "out", "with no -binary: where the binary is built, and -layout and -tarball go when neither is given")
	layoutDir := fs.String("layout", "", "write an OCI image layout (an index of every platform) to this directory")
	tarFile := fs.String("tarball", "", "write a docker/podman-loadable tarball of the one platform given")
	tag := fs.String("tag", "sharespot:dev", "the image's name in the tarball")
	version := fs.String("version", "dev", "org.opencontainers.image.version")
	caBundle := fs.String("ca-bundle", CABundle, "the CA certificates (PEM) to put in the image at "+CABundle)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q (flags only; -h lists them)", errUsage, fs.Arg(0))
	}
	ca, err := readCABundle(*caBundle)
	if err != nil {
		return err
	}
	created, err := sourceDate()
	if err != nil {
		return err
	}
	if len(bins) == 0 {
		p, path, err := buildHost(*out)
		if err != nil {
			return err
		}
		bins = append(bins, p+"="+path)
		if *layoutDir == "" && *tarFile == "" {
			*layoutDir, *tarFile = filepath.Join(*out, "oci"), filepath.Join(*out, "sharespot.tar")
		}
	}
	if *layoutDir == "" && *tarFile == "" {
		return fmt.Errorf("%w: give -layout DIR and/or -tarball FILE with -binary", errUsage)
	}
	if *tarFile != "" && len(bins) != 1 {
		return fmt.Errorf("%w: -tarball holds one platform: give one -binary", errUsage)
	}
	var imgs []v1.Image
	var plats []v1.Platform
	for _, b := range bins {
		plat, path, ok := strings.Cut(b, "=")
		p, err := v1.ParsePlatform(plat)
		if !ok || err != nil || p.OS == "" || p.Architecture == "" {
			return fmt.Errorf("%w: -binary %q: want os/arch[/variant]=PATH", errUsage, b)
		}
		img, err := Image(path, ca, *p, created, *version)
		if err != nil {
			return err
		}
		imgs, plats = append(imgs, img), append(plats, *p)
	}
	if *tarFile != "" {
		ref, err := name.NewTag(*tag)
		if err != nil {
			return fmt.Errorf("%w: -tag: %v", errUsage, err)
		}
		if err := os.MkdirAll(filepath.Dir(*tarFile), 0o755); err != nil {
			return err
		}
		if err := tarball.WriteToFile(*tarFile, ref, imgs[0]); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "oci: wrote %s (%s, %s): podman load -i %s\n", *tarFile, ref, plats[0], *tarFile)
	}
	if *layoutDir != "" {
		idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
		for i, img := range imgs {
			idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &plats[i]}})
		}
		if err := os.RemoveAll(*layoutDir); err != nil {
			return err
		}
		if _, err := layout.Write(*layoutDir, idx); err != nil {
			return err
		}
		d, err := idx.Digest()
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "oci: wrote the OCI layout %s (index below)\n", *layoutDir)
		fmt.Println(d)
	}
	return nil
}

// readCABundle reads the CA bundle to ship, and checks it holds
// certificates.
func readCABundle(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("the CA bundle the image needs for TLS to Stripe and PostgreSQL: %w "+
			"(install the ca-certificates package, or give -ca-bundle FILE)", err)
	}
	if !x509.NewCertPool().AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("-ca-bundle %s holds no PEM certificate: want a CA bundle such as %s", path, CABundle)
	}
	return b, nil
}

// buildHost builds the static binary for linux and this machine's
// architecture into dir/linux-ARCH/sharespot, from the module the command
// runs in.
func buildHost(dir string) (platform, path string, err error) {
	platform = "linux/" + runtime.GOARCH
	env := append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
	if runtime.GOARCH == "arm" {
		platform += "/v7"
		env = append(env, "GOARM=7")
	}
	path = filepath.Join(dir, "linux-"+runtime.GOARCH, "sharespot")
	fmt.Fprintf(os.Stderr, "oci: building %s for %s into %s\n", Package, platform, path)
	cmd := exec.Command("go", "build", "-trimpath", "-o", path, Package)
	cmd.Env, cmd.Stdout, cmd.Stderr = env, os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", "", fmt.Errorf("build %s (run this from the sharespot checkout): %w", Package, err)
	}
	return platform, path, nil
}

// sourceDate is SOURCE_DATE_EPOCH (seconds), or the epoch.
func sourceDate() (time.Time, error) {
	s := os.Getenv("SOURCE_DATE_EPOCH")
	if s == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q: want seconds since 1970", s)
	}
	return time.Unix(n, 0).UTC(), nil
}

// Image is the image of one platform's binary, with the CA bundle ca.
func Image(binPath string, ca []byte, p v1.Platform, created time.Time, version string) (v1.Image, error) {
	bin, err := os.ReadFile(binPath)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	entries := []struct {
		hdr  tar.Header
		data []byte
	}{
		{tar.Header{Typeflag: tar.TypeDir, Name: "etc/", Mode: 0o755}, nil},
		{tar.Header{Typeflag: tar.TypeDir, Name: "etc/ssl/", Mode: 0o755}, nil},
		{tar.Header{Typeflag: tar.TypeDir, Name: "etc/ssl/certs/", Mode: 0o755}, nil},
		{tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(CABundle, "/"), Mode: 0o644, Size: int64(len(ca))}, ca},
		{tar.Header{Typeflag: tar.TypeDir, Name: "usr/", Mode: 0o755}, nil},
		{tar.Header{Typeflag: tar.TypeDir, Name: "usr/local/", Mode: 0o755}, nil},
		{tar.Header{Typeflag: tar.TypeDir, Name: "usr/local/bin/", Mode: 0o755}, nil},
		{tar.Header{Typeflag: tar.TypeReg, Name: "usr/local/bin/sharespot", Mode: 0o755, Size: int64(len(bin))}, bin},
		{tar.Header{Typeflag: tar.TypeDir, Name: "var/", Mode: 0o755}, nil},
		{tar.Header{Typeflag: tar.TypeDir, Name: "var/lib/", Mode: 0o755}, nil},
		{tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(DataDir, "/") + "/", Mode: 0o700, Uid: UID, Gid: UID}, nil},
		{tar.Header{Typeflag: tar.TypeDir, Name: "tmp/", Mode: 0o1777}, nil},
	}
	for _, e := range entries {
		e.hdr.ModTime, e.hdr.Format = created, tar.FormatPAX
		if err := tw.WriteHeader(&e.hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	layerBytes := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(layerBytes)), nil },
		tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{Layer: layer, History: v1.History{Created: v1.Time{Time: created}, CreatedBy: "deploy/oci: sharespot binary", Comment: "static Go binary"}})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = p.OS, p.Architecture, p.Variant
	cf.Created = v1.Time{Time: created}
	cf.Config = v1.Config{
		Entrypoint: Entrypoint,
		Cmd:        Cmd,
		User:       fmt.Sprintf("%d:%d", UID, UID),
		WorkingDir: DataDir,
		Env: []string{"PATH=/usr/local/bin", "HOME=" + DataDir, "SHARESPOT_LISTEN=" + Listen, "SHARESPOT_DATA=" + DataDir,
			"XDG_DATA_HOME=" + DataDir, "XDG_CONFIG_HOME=" + DataDir, "XDG_STATE_HOME=" + DataDir},
		ExposedPorts: map[string]struct{}{"8474/tcp": {}},
		Volumes:      map[string]struct{}{DataDir: {}},
		StopSignal:   "SIGTERM",
		Labels: map[string]string{
			"org.opencontainers.image.title":         "sharespot",
			"org.opencontainers.image.description":   description,
			"org.opencontainers.image.version":       version,
			"org.opencontainers.image.source":        "https://github.com/sharespot/sharespot",
			"org.opencontainers.image.documentation": "https://github.com/sharespot/sharespot/blob/main/docs/deployment.md#oci-image",
		},
	}
	return mutate.ConfigFile(img, cf)
}
