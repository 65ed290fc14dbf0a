package loadgen

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseProcStat(t *testing.T) {
	// A command name with spaces and a ')' in it; utime 250, stime 50
	// ticks: 3 s.
	line := "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 123 1000 50 18446744073709551615\n"
	got, err := parseProcStat(line)
	if err != nil {
		t.Fatal(err)
	}
	if got != 3*time.Second {
		t.Errorf("parsed %v, want 3s", got)
	}
	// With the children waited for: cutime 120, cstime 80 more ticks.
	line = "4242 (postgres) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 120 80 20 0 7 0 123 1000 50 18446744073709551615\n"
	if got, err := parseProcStatFields(line, 11, 15); err != nil || got != 5*time.Second {
		t.Errorf("parsed %v (%v) with the children's, want 5s", got, err)
	}
	for _, bad := range []string{"", "4242 (x) S 1 2 3", "4242 (x) S 1 4242 4242 0 -1 4194560 100 0 0 0 x 50 0"} {
		if _, err := parseProcStat(bad); err == nil {
			t.Errorf("parseProcStat(%q) took it", bad)
		}
	}
}

// TestReadProcCPUCountsAnotherProcess reads the CPU of a child process
// that spins, and finds what the kernel's own accounting (the child's
// rusage once it has exited) says it used.
func TestReadProcCPUCountsAnotherProcess(t *testing.T) {
	if os.Getenv("LOADGEN_TEST_SPIN") == "1" {
		// The child: spin until this process has used 0.4 s of CPU by its
		// own clock, however busy the machine, then wait for stdin to close.
		for SelfCPU() < 400*time.Millisecond {
			for i := 0; i < 1e6; i++ {
				spinSink += i
			}
		}
		os.Stdout.WriteString("spun\n")
		io.Copy(io.Discard, os.Stdin)
		return
	}
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestReadProcCPUCountsAnotherProcess$")
	cmd.Env = append(os.Environ(), "LOADGEN_TEST_SPIN=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	m, err := StartCPU(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "spun\n" {
		t.Fatalf("the child said %q (%v)", line, err)
	}
	r, err := m.Stop(4, "flow")
	if err != nil {
		t.Fatal(err)
	}
	stdin.Close()
	go io.Copy(io.Discard, stdout)
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	kernel := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	if !r.Separate {
		t.Fatal("a child's CPU reported as this process's")
	}
	// The meter started a little after the child did and stopped when it
	// had spun; after that the child only waited. So /proc's figure is at
	// most the kernel's total, within 0.15 s of it (the start-up the meter
	// missed, and 10 ms ticks), and at least the 0.4 s spun less a tick.
	server := time.Duration(r.ServerS * float64(time.Second))
	if server > kernel || kernel-server > 150*time.Millisecond || server < 390*time.Millisecond-150*time.Millisecond {
		t.Errorf("server CPU %v by /proc, the kernel says the process used %v", server, kernel)
	}
	if want := 1000 * r.ServerS / 4; r.ServerPerUnitMS != want {
		t.Errorf("per flow %v ms, want %v", r.ServerPerUnitMS, want)
	}
}

var spinSink int

// TestCallFloorRefusesItsOwnProcess: a server inside the bench shares its
// CPU account with the clients, so the bare call cannot be measured
// apart; the floor says so rather than report the clients' CPU too.
func TestCallFloorRefusesItsOwnProcess(t *testing.T) {
	for _, pid := range []int{0, os.Getpid()} {
		if _, err := MeasureCallFloor(t.Context(), "http://127.0.0.1:1", nil, pid, 1, time.Millisecond); err == nil || !strings.Contains(err.Error(), "not a process of its own") {
			t.Errorf("pid %d: err %v, want a refusal", pid, err)
		}
	}
	f := CallFloor{ServerCPUPerCallUS: 80}
	if got := f.InCalls(0.56); got < 6.99 || got > 7.01 {
		t.Errorf("0.56 ms at 80 µs a call: %v calls, want 7", got)
	}
	if got := (CallFloor{}).InCalls(1); got != 0 {
		t.Errorf("no floor measured: %v calls, want 0", got)
	}
	run := &CPUReport{Separate: true, Units: 10, Unit: "flow", ServerPerUnitMS: 0.56}
	if got := f.Against(run).RunPerUnitInCalls; got < 6.99 || got > 7.01 {
		t.Errorf("a run at 0.56 ms a flow: %v calls, want 7", got)
	}
	together := &CPUReport{Together: true, Units: 10, Unit: "flow", ServerPerUnitMS: 0.56}
	if got := f.Against(together).RunPerUnitInCalls; got != 0 {
		t.Errorf("a run whose server CPU is mixed with the clients': %v calls, want none", got)
	}
	if (*CallFloor)(nil).Against(run) != nil {
		t.Error("no floor: want none against a run")
	}
}

// TestReadProcDiskWrites finds a file's megabyte, written and synced, in
// the process's storage writes, pages counted once each.
func TestReadProcDiskWrites(t *testing.T) {
	before, err := ReadProcDiskWrites(os.Getpid())
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "mb"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	page := make([]byte, 4096)
	for range 256 {
		// Each page written twice before the sync: dirtied once.
		if _, err := f.Write(page); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.WriteAt(page, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	after, err := ReadProcDiskWrites(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if after == before && os.Getenv("CI") != "true" {
		t.Skip("the temporary directory's file system accounts no storage writes (tmpfs?)")
	}
	if d := after - before; d < 1<<20 || d > 1<<20+64<<10 {
		t.Fatalf("a megabyte written and synced counts %d bytes of storage writes", d)
	}
}

// TestReadCommandCPU finds this test's own process by its name, with at
// least the CPU it has used.
func TestReadCommandCPU(t *testing.T) {
	comm, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		t.Skip("no /proc")
	}
	own := SelfCPU()
	got, n, err := ReadCommandCPU(strings.TrimSpace(string(comm)))
	if err != nil {
		t.Fatal(err)
	}
	if n < 1 || got < own-10*time.Millisecond {
		t.Fatalf("processes named %q: %d, with %v of CPU; want this one at least, with at least %v", strings.TrimSpace(string(comm)), n, got, own)
	}
	if _, n, err := ReadCommandCPU("no-such-command"); err != nil || n != 0 {
		t.Fatalf("no such command: %d processes, %v", n, err)
	}
}
