// Command oci builds Sharespot's OCI image without a container daemon or
// a Dockerfile: one layer holding the static binary (and an empty data
// directory owned by the image's user), on an empty base, written as an
// OCI image layout (a multi-platform index) and, for one platform, as a
// tarball that `docker load` and `podman load` read. Offline, and
// reproducible: every timestamp is SOURCE_DATE_EPOCH (default 0), so the
// same binaries give the same digests.
//
//	CGO_ENABLED=0 GOOS=linux GOARCH=amd64 go build -trimpath -o out/amd64/sharespot ./cmd/sharespot
//	CGO_ENABLED=0 GOOS=linux GOARCH=arm64 go build -trimpath -o out/arm64/sharespot ./cmd/sharespot
//	go run ./deploy/oci -layout out/oci -binary linux/amd64=out/amd64/sharespot -binary linux/arm64=out/arm64/sharespot
//	go run ./deploy/oci -tarball out/sharespot-amd64.tar -tag sharespot:dev -binary linux/amd64=out/amd64/sharespot
package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
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

// UID is the image's user (and group): not root.
const UID = 65532

type binaries []string

func (b *binaries) String() string     { return strings.Join(*b, ",") }
func (b *binaries) Set(s string) error { *b = append(*b, s); return nil }

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "oci:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("oci", flag.ContinueOnError)
	var bins binaries
	fs.Var(&bins, "binary", "os/arch=PATH of a sharespot binary (static: CGO_ENABLED=0); repeat per platform")
	layoutDir := fs.String("layout", "", "write an OCI image layout (an index of every platform) to this directory")
	tarFile := fs.String("tarball", "", "write a docker/podman-loadable tarball of the one platform given")
	tag := fs.String("tag", "sharespot:dev", "the image's name in the tarball")
	version := fs.String("version", "dev", "org.opencontainers.image.version")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if len(bins) == 0 || (*layoutDir == "" && *tarFile == "") {
		return errors.New("give -binary os/arch=PATH and -layout DIR and/or -tarball FILE")
	}
	created, err := sourceDate()
	if err != nil {
		return err
	}
	var imgs []v1.Image
	var plats []v1.Platform
	for _, b := range bins {
		plat, path, ok := strings.Cut(b, "=")
		p, err := v1.ParsePlatform(plat)
		if !ok || err != nil || p.OS == "" || p.Architecture == "" {
			return fmt.Errorf("-binary %q: want os/arch[/variant]=PATH", b)
		}
		img, err := Image(path, *p, created, *version)
		if err != nil {
			return err
		}
		imgs, plats = append(imgs, img), append(plats, *p)
	}
	if *tarFile != "" {
		if len(imgs) != 1 {
			return errors.New("-tarball holds one platform: give one -binary")
		}
		ref, err := name.NewTag(*tag)
		if err != nil {
			return fmt.Errorf("-tag: %w", err)
		}
		if err := tarball.WriteToFile(*tarFile, ref, imgs[0]); err != nil {
			return err
		}
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
		fmt.Println(d)
	}
	return nil
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

// Image is the image of one platform's binary.
func Image(binPath string, p v1.Platform, created time.Time, version string) (v1.Image, error) {
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
		{tar.Header{Typeflag: tar.TypeDir, Name: "usr/", Mode: 0o755}, nil},
		{tar.Header{Typeflag: tar.TypeDir, Name: "usr/local/", Mode: 0o755}, nil},
		{tar.Header{Typeflag: tar.TypeDir, Name: "usr/local/bin/", Mode: 0o755}, nil},
		{tar.Header{Typeflag: tar.TypeReg, Name: "usr/local/bin/sharespot", Mode: 0o755, Size: int64(len(bin))}, bin},
		{tar.Header{Typeflag: tar.TypeDir, Name: "var/", Mode: 0o755}, nil},
		{tar.Header{Typeflag: tar.TypeDir, Name: "var/lib/", Mode: 0o755}, nil},
		{tar.Header{Typeflag: tar.TypeDir, Name: "var/lib/sharespot/", Mode: 0o700, Uid: UID, Gid: UID}, nil},
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
		Entrypoint: []string{"/usr/local/bin/sharespot"},
		// A server on the data volume. Listening beyond loopback needs
		// --tls-cert/--tls-key, or --insecure-plaintext behind a
		// TLS-terminating load balancer: give them with the command.
		Cmd:          []string{"server", "--data", "/var/lib/sharespot", "--listen", "0.0.0.0:8474"},
		User:         fmt.Sprintf("%d:%d", UID, UID),
		WorkingDir:   "/var/lib/sharespot",
		Env:          []string{"PATH=/usr/local/bin", "HOME=/var/lib/sharespot", "XDG_DATA_HOME=/var/lib/sharespot", "XDG_CONFIG_HOME=/var/lib/sharespot", "XDG_STATE_HOME=/var/lib/sharespot"},
		ExposedPorts: map[string]struct{}{"8474/tcp": {}},
		Volumes:      map[string]struct{}{"/var/lib/sharespot": {}},
		StopSignal:   "SIGTERM",
		Labels: map[string]string{
			"org.opencontainers.image.title":   "sharespot",
			"org.opencontainers.image.version": version,
			"org.opencontainers.image.source":  "https://github.com/sharespot/sharespot",
		},
	}
	return mutate.ConfigFile(img, cf)
}
