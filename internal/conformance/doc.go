// Package conformance proves the claims of docs/claims.md step by step,
// through a real server over HTTP with real clients on a SQLite file. Each
// test names the claim step it proves: TestClaim/C1.9_low_quota_prompt.
package conformance
