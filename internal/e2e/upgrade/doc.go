// Package upgrade tests that today's code opens a database written by
// every earlier release of the schema, upgrades it and keeps its money
// and sessions whole. It has no code of its own: the test opens databases
// frozen at each released schema before the newest (testdata/vN, made by
// the code of that time with testdata/generate.sh) on SQLite and on
// PostgreSQL, lets the store apply the later migrations, audits them with
// the same checks as the process-level suites, and then runs today's
// session engine on the old rows.
package upgrade
