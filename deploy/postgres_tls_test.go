package deploy

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sharespot/sharespot/internal/store"
)

// docBlock returns the fenced code block of docs/deployment.md that
// contains marker.
func docBlock(t *testing.T, marker string) string {
	t.Helper()
	doc, err := os.ReadFile("../docs/deployment.md")
	if err != nil {
		t.Fatal(err)
	}
	var block []string
	in := false
	sc := bufio.NewScanner(strings.NewReader(string(doc)))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "```") && !in:
			in, block = true, nil
		case strings.HasPrefix(line, "```"):
			in = false
			if text := strings.Join(block, "\n") + "\n"; strings.Contains(text, marker) {
				return text
			}
		case in:
			block = append(block, line)
		}
	}
	t.Fatalf("docs/deployment.md has no code block with %q", marker)
	return ""
}

// postgresCredential is whom initdb and postgres run as: postgres refuses
// to run as root, so as root, the postgres user; otherwise nil (the
// test's own user).
func postgresCredential(t *testing.T) *syscall.Credential {
	t.Helper()
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		t.Fatalf("running as root, PostgreSQL needs a user to run as: %v", err)
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
}

// postgresBin is the newest /usr/lib/postgresql/*/bin holding initdb and
// postgres.
func postgresBin(t *testing.T) string {
	t.Helper()
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int {
		va, _ := strconv.Atoi(filepath.Base(filepath.Dir(a)))
		vb, _ := strconv.Atoi(filepath.Base(filepath.Dir(b)))
		return vb - va
	})
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d
		}
	}
	return ""
}

// TestPostgresTLS follows docs/deployment.md, "PostgreSQL over TLS
// (verify-full)": it runs the page's openssl block (localhost and
// 127.0.0.1 for db.internal and 10.0.0.20), starts a PostgreSQL of its
// own with the page's postgresql.conf lines and TLS-only access, and
// opens the store with sslmode=verify-full by address and by name. The
// same block without the IP SAN makes a certificate that passes by name
// and fails by address.
func TestPostgresTLS(t *testing.T) {
	bin := postgresBin(t)
	_, opensslErr := exec.LookPath("openssl")
	if bin == "" || opensslErr != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("PostgreSQL's binaries (/usr/lib/postgresql/*/bin: %q) and openssl (%v) are required in CI", bin, opensslErr)
		}
		t.Skipf("needs PostgreSQL's binaries in /usr/lib/postgresql/*/bin (found %q) and openssl (%v)", bin, opensslErr)
	}
	cred := postgresCredential(t)
	// A directory of its own (t.TempDir's parent is closed to other
	// users), given to the postgres user.
	dir, err := os.MkdirTemp("", "sharespot-pgtls-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })

	certs := docBlock(t, "TestPostgresTLS runs this block")
	conf := docBlock(t, "ssl_cert_file")
	local := strings.NewReplacer("db.internal", "localhost", "10.0.0.20", "127.0.0.1")
	if !strings.Contains(certs, ", IP:10.0.0.20") {
		t.Fatal("the openssl block no longer names IP:10.0.0.20 as this test expects")
	}
	for name, script := range map[string]string{
		"san-ip":    local.Replace(certs),
		"san-no-ip": local.Replace(strings.Replace(certs, ", IP:10.0.0.20", "", 1)),
	} {
		d := filepath.Join(dir, name)
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("sh", "-e", "-c", script)
		cmd.Dir = d
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("the page's openssl block (%s): %v\n%s", name, err, out)
		}
	}
	data := filepath.Join(dir, "data")
	if cred != nil {
		if err := filepath.WalkDir(dir, func(p string, _ os.DirEntry, err error) error {
			if err != nil {
				return err
			}
			return os.Lchown(p, int(cred.Uid), int(cred.Gid))
		}); err != nil {
			t.Fatal(err)
		}
	}
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8", "--no-instructions")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	appendFile(t, filepath.Join(data, "postgresql.conf"), strings.ReplaceAll(conf, "/etc/postgresql/tls/", filepath.Join(dir, "san-ip")+"/"))
	// TLS only, over TCP from loopback: a cleartext connection is refused.
	if err := os.WriteFile(filepath.Join(data, "pg_hba.conf"), []byte("local all all trust\nhostssl all all 127.0.0.1/32 trust\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if cred != nil {
		os.Lchown(filepath.Join(data, "pg_hba.conf"), int(cred.Uid), int(cred.Gid))
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	caIP, caNoIP := filepath.Join(dir, "san-ip", "pg-ca.pem"), filepath.Join(dir, "san-no-ip", "pg-ca.pem")
	dsn := func(host, ca, mode string) string {
		return fmt.Sprintf("postgres://postgres@%s:%d/postgres?sslmode=%s&sslrootcert=%s&connect_timeout=5", host, port, mode, ca)
	}

	stop := startPostgres(t, bin, data, port, cred)
	for _, host := range []string{"127.0.0.1", "localhost"} {
		if err := openStore(dsn(host, caIP, "verify-full")); err != nil {
			t.Errorf("verify-full by %s with the page's certificate: %v", host, err)
		}
	}
	if err := openStore(fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable&connect_timeout=5", port)); err == nil {
		t.Error("a cleartext connection was let in: the test's hostssl-only access is not what it ran with")
	}
	stop()

	// The certificate without the IP SAN: by name it passes, by address
	// verify-full refuses it.
	noIP := filepath.Join(dir, "san-no-ip")
	stop = startPostgres(t, bin, data, port, cred, "-c", "ssl_cert_file="+filepath.Join(noIP, "server.crt"), "-c", "ssl_key_file="+filepath.Join(noIP, "server.key"))
	defer stop()
	if err := openStore(dsn("localhost", caNoIP, "verify-full")); err != nil {
		t.Errorf("verify-full by name with a certificate naming it: %v", err)
	}
	err = openStore(dsn("127.0.0.1", caNoIP, "verify-full"))
	if err == nil || !strings.Contains(err.Error(), "doesn't contain any IP SANs") {
		t.Errorf("verify-full by address with a certificate without an IP SAN: %v, want the error the page quotes", err)
	} else {
		t.Logf("without the IP SAN, by address: %v", err)
	}
}

func appendFile(t *testing.T, path, text string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString("\n" + text); err != nil {
		t.Fatal(err)
	}
}

// openStore opens and closes the store at dsn.
func openStore(dsn string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := store.Open(ctx, dsn, store.Options{})
	if err != nil {
		return err
	}
	return st.Close()
}

// startPostgres runs postgres on data, listening on 127.0.0.1:port (its
// socket in data), until it is ready; stop shuts it down (fast) and
// waits.
func startPostgres(t *testing.T, bin, data string, port int, cred *syscall.Credential, extra ...string) (stop func()) {
	t.Helper()
	logPath := data + ".log"
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	args := append([]string{"-D", data, "-p", strconv.Itoa(port), "-k", data, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"}, extra...)
	cmd := exec.Command(filepath.Join(bin, "postgres"), args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGQUIT}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cmd.Process.Signal(syscall.SIGINT) // fast shutdown
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-exited
			t.Errorf("postgres did not stop on SIGINT")
		}
	}
	deadline := time.After(30 * time.Second)
	for {
		b, _ := os.ReadFile(logPath)
		if strings.Contains(string(b), "ready to accept connections") {
			return stop
		}
		select {
		case err := <-exited:
			stopped = true
			t.Fatalf("postgres exited (%v):\n%s", err, b)
		case <-deadline:
			stop()
			t.Fatalf("postgres not ready after 30 s:\n%s", b)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
