package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sharespot/sharespot/internal/store"
)

// userHZ is the unit of /proc/PID/stat's CPU times: USER_HZ, 100 on every
// Linux architecture Go supports (the kernel's ABI, whatever its own HZ).
const userHZ = 100

// ReadProcCPU returns the CPU time, user and system, that process pid's
// threads have used so far, from /proc/PID/stat (all its threads, the
// ones that ended too; 10 ms resolution).
func ReadProcCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("loadgen: read CPU time of process %d: %w", pid, err)
	}
	return parseProcStat(string(b))
}

// ReadCommandCPU returns the CPU time, user and system, that the
// processes of this machine named comm (/proc/PID/comm, as "postgres")
// have used so far, with that of their children that ended and were
// waited for (a database's backends, which its postmaster waits for), and
// how many such processes there are. For a database on this machine: its
// CPU beside the server's.
func ReadCommandCPU(comm string) (time.Duration, int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, 0, fmt.Errorf("loadgen: CPU time of %s: %w", comm, err)
	}
	var total time.Duration
	n := 0
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		name, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err != nil || strings.TrimSpace(string(name)) != comm {
			continue // not it, or it ended
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		d, err := parseProcStatFields(string(b), 11, 15) // utime, stime, cutime, cstime
		if err != nil {
			return 0, 0, err
		}
		total += d
		n++
	}
	return total, n, nil
}

// parseProcStat takes utime and stime (fields 14 and 15) from a stat line;
// the command name (field 2) may hold spaces and parentheses, so fields
// are counted after its last ')'.
func parseProcStat(s string) (time.Duration, error) {
	return parseProcStatFields(s, 11, 13)
}

// parseProcStatFields adds up the clock ticks of the fields [from, to)
// counted after the command name (11: utime, field 14 of the line).
func parseProcStatFields(s string, from, to int) (time.Duration, error) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("loadgen: /proc stat line without a command name")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < to {
		return 0, fmt.Errorf("loadgen: /proc stat line has %d fields after the name, want at least %d", len(f), to)
	}
	var ticks int64
	for _, v := range f[from:to] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("loadgen: /proc stat CPU time %q: %w", v, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / userHZ, nil
}

// ReadProcDiskWrites returns the bytes process pid has caused to be
// written to storage so far (write_bytes of /proc/PID/io: each page it
// dirtied in the page cache, counted when it turns dirty, so a page
// written again before it is written back counts once).
func ReadProcDiskWrites(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return 0, fmt.Errorf("loadgen: read the storage writes of process %d: %w", pid, err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "write_bytes:"); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("loadgen: /proc/%d/io write_bytes %q: %w", pid, v, err)
			}
			return n, nil
		}
	}
	return 0, fmt.Errorf("loadgen: /proc/%d/io has no write_bytes", pid)
}

// SelfCPU is this process's CPU time, user and system (getrusage).
func SelfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// CPUMeter measures the CPU a server process uses over a run, and the
// bench's own process beside it.
type CPUMeter struct {
	pid         int
	server, own time.Duration
	disk        int64 // the server's storage writes at the start; -1: not readable
	t0          time.Time
}

// StartCPU starts measuring server process pid (0: no process to read:
// only the bench's own CPU is measured).
func StartCPU(pid int) (*CPUMeter, error) {
	m := &CPUMeter{pid: pid, own: SelfCPU(), t0: time.Now()}
	if pid > 0 {
		var err error
		if m.server, err = ReadProcCPU(pid); err != nil {
			return nil, err
		}
		if m.disk, err = ReadProcDiskWrites(pid); err != nil {
			m.disk = -1 // a kernel without task I/O accounting: not reported
		}
	}
	return m, nil
}

// CPUReport is the CPU a run used: the server process's (when it is a
// process of its own) and the bench's, in all and per unit of work.
type CPUReport struct {
	// Separate: the server ran in a process of its own, so ServerS is the
	// server alone. Without it (--in-process) the bench's process holds
	// server and clients together, in BenchS.
	Separate bool `json:"server_process"`
	// Together: the server ran inside the bench; BenchS is both. Neither
	// this nor Separate: the server is not this machine's to read (a
	// deployment), and BenchS is the clients alone.
	Together bool    `json:"server_in_bench"`
	WallS    float64 `json:"wall_s"`
	ServerS  float64 `json:"server_cpu_s,omitempty"`
	BenchS   float64 `json:"bench_cpu_s"`
	// ServerCores is the server's mean CPU use over the run, in cores.
	ServerCores float64 `json:"server_cores,omitempty"`
	Units       int64   `json:"units"`
	Unit        string  `json:"unit"`
	// ServerPerUnitMS is the server's CPU per completed flow or relayed
	// message; BenchPerUnitMS the clients' (or both's, in process).
	ServerPerUnitMS float64 `json:"server_cpu_ms_per_unit,omitempty"`
	BenchPerUnitMS  float64 `json:"bench_cpu_ms_per_unit"`
	// ServerDiskKBPerUnit is the server's writes to storage per unit, in
	// KiB (ReadProcDiskWrites: the WAL's pages and the checkpoint's): how
	// many pages a flow's commits write, which CPU time is too noisy to
	// show. Zero when not readable.
	ServerDiskKBPerUnit float64 `json:"server_disk_kib_per_unit,omitempty"`
}

// Stop ends the measure: units of work (completed flows, delivered
// messages) were done.
func (m *CPUMeter) Stop(units int64, unit string) (CPUReport, error) {
	r := CPUReport{Separate: m.pid > 0 && m.pid != os.Getpid(), Together: m.pid == os.Getpid(), WallS: time.Since(m.t0).Seconds(), Units: units, Unit: unit,
		BenchS: (SelfCPU() - m.own).Seconds()}
	if r.Separate {
		c, err := ReadProcCPU(m.pid)
		if err != nil {
			return r, err
		}
		r.ServerS = (c - m.server).Seconds()
		r.ServerCores = r.ServerS / r.WallS
		if d, err := ReadProcDiskWrites(m.pid); err == nil && m.disk >= 0 && units > 0 {
			r.ServerDiskKBPerUnit = float64(d-m.disk) / 1024 / float64(units)
		}
	}
	if units > 0 {
		r.ServerPerUnitMS = 1000 * r.ServerS / float64(units)
		r.BenchPerUnitMS = 1000 * r.BenchS / float64(units)
	}
	return r, nil
}

// WriteTable writes the CPU lines of a report.
func (r CPUReport) WriteTable(w io.Writer) {
	if r.Units == 0 {
		fmt.Fprintf(w, "\nCPU: no %s completed\n", r.Unit)
		return
	}
	if r.Separate {
		fmt.Fprintf(w, "\nserver process CPU: %.2f s over %.1f s (%.2f cores): %s per %s\n", r.ServerS, r.WallS, r.ServerCores, perUnit(r.ServerPerUnitMS), r.Unit)
		fmt.Fprintf(w, "bench process CPU (clients): %.2f s: %s per %s\n", r.BenchS, perUnit(r.BenchPerUnitMS), r.Unit)
		if r.ServerDiskKBPerUnit > 0 {
			fmt.Fprintf(w, "server process writes to storage: %.1f KiB per %s\n", r.ServerDiskKBPerUnit, r.Unit)
		}
		return
	}
	if r.Together {
		fmt.Fprintf(w, "\nCPU of server and clients together (one process; --spawn measures the server alone): %.2f s: %s per %s\n", r.BenchS, perUnit(r.BenchPerUnitMS), r.Unit)
		return
	}
	fmt.Fprintf(w, "\nbench process CPU (clients; the server's own is not readable from here): %.2f s: %s per %s\n", r.BenchS, perUnit(r.BenchPerUnitMS), r.Unit)
}

func perUnit(ms float64) string {
	if ms < 1 {
		return fmt.Sprintf("%.0f µs", 1000*ms)
	}
	return fmt.Sprintf("%.2f ms", ms)
}

// Yardstick is what this machine's storage and CPU do without Sharespot,
// measured beside a run, so that a figure can be read against the machine
// it ran on: SQLite (WAL, synchronous=FULL, the store's own settings) in
// the run's data directory, inserting rows in transactions of 100 and
// committing one row per transaction.
type Yardstick struct {
	BatchedRowsPerS   float64 `json:"batched_rows_per_s"`
	SingleCommitsPerS float64 `json:"single_commits_per_s"`
}

// MeasureYardstick measures for about d (half each) in a scratch database
// in dir, removed after.
func MeasureYardstick(ctx context.Context, dir string, d time.Duration) (Yardstick, error) {
	sub, err := os.MkdirTemp(dir, "yardstick-")
	if err != nil {
		return Yardstick{}, fmt.Errorf("loadgen: yardstick: %w", err)
	}
	defer os.RemoveAll(sub)
	db, err := store.OpenScratchSQLite(filepath.Join(sub, "y.db"))
	if err != nil {
		return Yardstick{}, fmt.Errorf("loadgen: yardstick: %w", err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `CREATE TABLE yardstick_rows (id INTEGER PRIMARY KEY, k TEXT NOT NULL, v INTEGER NOT NULL)`); err != nil {
		return Yardstick{}, fmt.Errorf("loadgen: yardstick: %w", err)
	}
	var y Yardstick
	id := 0
	insert := func(n int) error {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer tx.Rollback()
		st, err := tx.PrepareContext(ctx, `INSERT INTO yardstick_rows (id, k, v) VALUES (?, ?, ?)`)
		if err != nil {
			return err
		}
		defer st.Close()
		for range n {
			id++
			if _, err := st.ExecContext(ctx, id, "yardstick-row-"+strconv.Itoa(id), id*7); err != nil {
				return err
			}
		}
		return tx.Commit()
	}
	rate := func(batch int) (float64, error) {
		t0 := time.Now()
		rows := 0
		for time.Since(t0) < d/2 {
			if err := insert(batch); err != nil {
				return 0, fmt.Errorf("loadgen: yardstick: %w", err)
			}
			rows += batch
		}
		return float64(rows) / time.Since(t0).Seconds(), nil
	}
	if y.BatchedRowsPerS, err = rate(100); err != nil {
		return y, err
	}
	if y.SingleCommitsPerS, err = rate(1); err != nil {
		return y, err
	}
	return y, nil
}

// WriteTable writes the yardstick line.
func (y Yardstick) WriteTable(w io.Writer) {
	fmt.Fprintf(w, "yardstick (this machine, SQLite WAL synchronous=FULL): %.0f rows/s in transactions of 100, %.0f single-row commits/s\n",
		y.BatchedRowsPerS, y.SingleCommitsPerS)
}
