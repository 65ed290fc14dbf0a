package store

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// Each table has one writing package: the package that owns it. Others
// read it, or ask the owner to change it (a money table with two writers
// had two sets of rules for the same rows). TestOneWriterPerTable finds
// the SQL statements that write (INSERT INTO t, UPDATE t, DELETE FROM t)
// in the string literals of every non-test Go file of the module's
// internal/ and cmd/ trees, joining the literals of a concatenation, and
// fails when a table is written from two packages, or when a write's table
// cannot be seen (built from a variable).

// sharedTables lists the tables more than one package may write, each
// with the reason. Keep it empty: give the table's owner a function
// instead.
var sharedTables = map[string]string{}

// hidden stands in, in a concatenation, for an operand that is not a
// string literal.
const hidden = "\x00"

var (
	writeRE  = regexp.MustCompile(`(?i)\b(INSERT\s+(?:OR\s+[A-Z]+\s+)?INTO|REPLACE\s+INTO|UPDATE|DELETE\s+FROM)\s+("?)([A-Za-z_][A-Za-z0-9_]*|` + hidden + `)`)
	createRE = regexp.MustCompile(`(?i)\bCREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?"?([A-Za-z_][A-Za-z0-9_]*)`)
)

// sqlStrings returns the string literals of a Go file, each concatenation
// of literals joined into one string with hidden in place of any other
// operand.
func sqlStrings(fset *token.FileSet, f *ast.File) []string {
	var out []string
	var visit func(n ast.Node) bool
	visit = func(n ast.Node) bool {
		switch e := n.(type) {
		case *ast.BinaryExpr:
			if e.Op != token.ADD {
				return true
			}
			var b strings.Builder
			lits := 0
			var flatten func(x ast.Expr)
			flatten = func(x ast.Expr) {
				switch y := x.(type) {
				case *ast.ParenExpr:
					flatten(y.X)
					return
				case *ast.BinaryExpr:
					if y.Op == token.ADD {
						flatten(y.X)
						flatten(y.Y)
						return
					}
				case *ast.BasicLit:
					if y.Kind == token.STRING {
						if s, err := strconv.Unquote(y.Value); err == nil {
							b.WriteString(s)
							lits++
							return
						}
					}
				}
				b.WriteString(hidden)
				ast.Inspect(x, visit) // literals inside calls and the like
			}
			flatten(e)
			if lits > 0 {
				out = append(out, b.String())
			}
			return false
		case *ast.BasicLit:
			if e.Kind == token.STRING {
				if s, err := strconv.Unquote(e.Value); err == nil {
					out = append(out, s)
				}
			}
		}
		return true
	}
	ast.Inspect(f, visit)
	return out
}

// write is one write statement found: its table ("" when it cannot be
// seen) and where.
type write struct {
	table, pos string
}

// writesIn returns the writes to known tables in a file's strings.
func writesIn(src []string, known map[string]bool, pos string) []write {
	var ws []write
	for _, s := range src {
		for _, m := range writeRE.FindAllStringSubmatch(s, -1) {
			switch t := strings.ToLower(m[3]); {
			case t == hidden:
				// A keyword then a computed name: a write if the text is
				// SQL (upper-case keyword), not prose.
				if m[1] == strings.ToUpper(m[1]) {
					ws = append(ws, write{"", pos})
				}
			case known[t]:
				ws = append(ws, write{t, pos})
			}
		}
	}
	return ws
}

// scanWrites parses every non-test Go file under roots (relative to this
// package's directory) and returns, for each table written, the packages
// (directories relative to the module root) that write it and where, and
// the writes whose table cannot be seen. Tables created in Go code (a
// test harness's) join known.
func scanWrites(t *testing.T, known map[string]bool, roots ...string) (map[string]map[string][]string, []string) {
	t.Helper()
	module, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	type file struct {
		rel     string
		strings []string
	}
	var files []file
	for _, root := range roots {
		err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() {
				if d.Name() == "testdata" {
					return filepath.SkipDir
				}
				return nil
			}
			if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return nil
			}
			fset := token.NewFileSet()
			f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
			if err != nil {
				return err
			}
			abs, err := filepath.Abs(path)
			if err != nil {
				return err
			}
			rel, err := filepath.Rel(module, abs)
			if err != nil {
				return err
			}
			src := sqlStrings(fset, f)
			for _, s := range src {
				for _, m := range createRE.FindAllStringSubmatch(s, -1) {
					known[strings.ToLower(m[1])] = true
				}
			}
			files = append(files, file{rel: filepath.ToSlash(rel), strings: src})
			return nil
		})
		if err != nil {
			t.Fatalf("scan %s: %v", root, err)
		}
	}
	writers := map[string]map[string][]string{}
	var unseen []string
	for _, f := range files {
		pkg := filepath.ToSlash(filepath.Dir(f.rel))
		for _, w := range writesIn(f.strings, known, f.rel) {
			if w.table == "" {
				unseen = append(unseen, w.pos)
				continue
			}
			if writers[w.table] == nil {
				writers[w.table] = map[string][]string{}
			}
			writers[w.table][pkg] = append(writers[w.table][pkg], w.pos)
		}
	}
	return writers, unseen
}

// knownTables returns the tables the migrations create, and the store's
// own bookkeeping table.
func knownTables(t *testing.T) map[string]bool {
	t.Helper()
	ms, err := migrations()
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{"schema_migrations": true}
	for _, m := range ms {
		for _, c := range createRE.FindAllStringSubmatch(m.sql, -1) {
			known[strings.ToLower(c[1])] = true
		}
	}
	return known
}

func TestOneWriterPerTable(t *testing.T) {
	known := knownTables(t)
	writers, unseen := scanWrites(t, known, "..", "../../cmd")
	for _, pos := range unseen {
		t.Errorf("%s: a write whose table is built from a variable; name the table in the literal so this test can see its writer", pos)
	}
	tables := make([]string, 0, len(writers))
	for table := range writers {
		tables = append(tables, table)
	}
	sort.Strings(tables)
	for _, table := range tables {
		pkgs := writers[table]
		if len(pkgs) < 2 {
			continue
		}
		if _, ok := sharedTables[table]; ok {
			continue
		}
		var where []string
		for pkg, pos := range pkgs {
			where = append(where, fmt.Sprintf("%s (%s)", pkg, strings.Join(slices.Compact(pos), ", ")))
		}
		sort.Strings(where)
		t.Errorf("table %s is written by %d packages: %s; one package owns a table: let the others call it", table, len(pkgs), strings.Join(where, "; "))
	}
	for table, why := range sharedTables {
		if len(writers[table]) < 2 {
			t.Errorf("sharedTables lists %s (%s), which has one writer now: take it off", table, why)
		}
	}
	// Every table of the schema has its writer, so a scan that sees
	// nothing cannot pass.
	for table := range known {
		if len(writers[table]) == 0 {
			t.Errorf("no package writes table %s: the scan missed its writes, or the table is unused", table)
		}
	}
	// The owners as they are; change this when a table changes hands.
	owners := map[string]string{}
	for table, pkgs := range writers {
		for pkg := range pkgs {
			owners[table] = pkg
		}
	}
	want := map[string]string{
		"accounts":           "internal/account",
		"devices":            "internal/account",
		"challenges":         "internal/auth",
		"tokens":             "internal/auth",
		"card_intents":       "internal/card",
		"payout_accounts":    "internal/card",
		"stripe_events":      "internal/card",
		"stripe_ops":         "internal/card",
		"dashboard_keys":     "internal/dashboard",
		"dashboard_links":    "internal/dashboard",
		"dashboard_sessions": "internal/dashboard",
		"harness_tap":        "internal/harness",
		"ledger_accounts":    "internal/ledger",
		"ledger_transfers":   "internal/ledger",
		"platform_keys":      "internal/payment",
		"receipts":           "internal/payment",
		"hotspots":           "internal/registry",
		"inbox":              "internal/relay",
		"quotes":             "internal/session",
		"sessions":           "internal/session",
		"schema_migrations":  "internal/store",
		"usage_samples":      "internal/session",
		"host_records":       "internal/session",
		"yardstick_rows":     "internal/loadgen", // the bench's scratch database, never the server's
	}
	if d := cmp.Diff(want, owners); d != "" && !t.Failed() {
		t.Errorf("table owners (-want +got):\n%s", d)
	}
}

// TestWritesSeen checks what the scan takes for a write.
func TestWritesSeen(t *testing.T) {
	known := map[string]bool{"sessions": true, "quotes": true, "devices": true}
	for _, tc := range []struct {
		name, src string
		want      []write
	}{
		{"a literal", "x := `UPDATE sessions SET a = 1`", []write{{"sessions", "f"}}},
		{"an insert in a call", `tx.Exec("INSERT INTO quotes (id) VALUES (?)", id)`, []write{{"quotes", "f"}}},
		{"a delete", `tx.Exec("DELETE FROM devices WHERE id = ?", id)`, []write{{"devices", "f"}}},
		{"lower case", `tx.Exec("insert or ignore into quotes (id) values (?)", id)`, []write{{"quotes", "f"}}},
		{"an update returning", "tx.QueryRow(`UPDATE devices SET n = n + 1 WHERE id = ? RETURNING n`, id)", []write{{"devices", "f"}}},
		{"a concatenation", "tx.Exec(`UPDATE sessions SET `+column+` = `+column+` + ? WHERE id = ?`, a, id)", []write{{"sessions", "f"}}},
		{"a concatenation in parentheses", "tx.Exec((`INSERT INTO ` + `quotes (`) + cols + `) VALUES (?)`)", []write{{"quotes", "f"}}},
		{"inside a call in a concatenation", "q := `SELECT 1` + f(`DELETE FROM quotes`)", []write{{"quotes", "f"}}},
		{"a computed table", "tx.Exec(`DELETE FROM ` + table)", []write{{"", "f"}}},
		{"a read", "tx.Query(`SELECT * FROM sessions WHERE id IN (SELECT session_id FROM quotes)`)", nil},
		{"an upsert's update", "tx.Exec(`INSERT INTO quotes (id) VALUES (?) ON CONFLICT (id) DO UPDATE SET n = 1`)", []write{{"quotes", "f"}}},
		{"a trigger", "tx.Exec(`CREATE TRIGGER t AFTER INSERT OR UPDATE ON ` + tbl)", nil},
		{"prose", `fmt.Errorf("session: update sessions of %s: %w", id, err)`, []write{{"sessions", "f"}}},
		{"prose about a computed thing", `fmt.Errorf("update " + what)`, nil},
		{"a comment", "// UPDATE sessions SET a = 1\nx := 1", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fset := token.NewFileSet()
			f, err := parser.ParseFile(fset, "f.go", "package p\nfunc f() {\n"+tc.src+"\n}\n", 0)
			if err != nil {
				t.Fatal(err)
			}
			got := writesIn(sqlStrings(fset, f), known, "f")
			if d := cmp.Diff(tc.want, got, cmp.AllowUnexported(write{})); d != "" {
				t.Errorf("writes (-want +got):\n%s", d)
			}
		})
	}
}
