#!/usr/bin/env bash
# Makes the frozen databases the upgrade test opens: for each released
# schema N before the newest, the database that the code of the last commit
# where migration N was the newest leaves after a small flow, on SQLite and
# on PostgreSQL. That commit is checked out into a temporary worktree,
# generate/ is copied into it as internal/upgradefixture and its
# TestMakeFixture run there (see generate/flow_test.go for what it writes);
# nothing of today's code takes part.
#
#   internal/e2e/upgrade/testdata/generate.sh [N ...]   (default: all)
#
# Writes vN/sharespot.db.gz (the SQLite file, VACUUMed, journal_mode
# DELETE, gzipped), vN/postgres.sql (pg_dump --no-owner --no-privileges
# --column-inserts) and, from schema 2 on, vN/platform.key (the key file
# that seals the platform's signing keys in both databases).
#
# Needs git, go, sqlite3, psql and pg_dump, PostgreSQL at
# $SHARESPOT_TEST_POSTGRES (default postgres://postgres@127.0.0.1:5432/postgres),
# and for schema 3 stripe-mock (go install github.com/stripe/stripe-mock@latest).
#
# When a migration N+1 is released, add N here: the last commit where N is
# the newest, and the generate/ files that build against it.
set -euo pipefail

declare -A commit=(
	[1]=ee7af18c81e13162ab7536904880579b88e0196a # auth: require proof of possession in AddDevice
	[2]=d8ff144dd1223a38b380b3c807064ae97f558932 # crashtest: re-send a unary call ... (0002 final since 84e6f61)
	[3]=f47a9afa0307d2c84404a945fa13cdf561119eef # merge stripe: card payments through Stripe (issue 13)
	[4]=92b3f36163d535d66eeeb7ed2715b81750a83d2b # session, loadgen: the guest's account straight from the session row (before issue 20)
	[5]=0f87d607ad11bbce5e259f7be3cf22afd4d7d5f8 # ci: read haproxy -v whole (issues 20 and 21 landed)
	[6]=e0372506a76c2aa270a78457f15dc341a619e16e # merge issue23 (0006 the newest; 0007 usage_samples came with issue 24)
	[7]=8fb5a699d7d418b2c23f042442e4a3eacf934d9d # README: the claims table names the scripting and wording tests (0007 the newest; 0008 host_records came with issue 25)
	[8]=74bfe51a0e5fbfc6a6f5048684d9661af8ec9f67 # protocol: IDs lead with their time (0008 the newest; 0009 session_indexes came with issue 25)
	[9]=8a4981f7ad9057f4ae8a7cef4c64dc2732ceeea8 # gateway/nft: the WireGuard suite's overhead bound (0009 the newest, and the last commit whose SQLite writer kept devices.next_seq exact; 0010 inbox_sequence came with issue 25)
	[10]=fe9430f7daff20b08bfd253ff752dd88f149b570 # docs: the seventeenth step's waits (0010 the newest; 0011 session_saves came with issue 25)
)
declare -A files=(
	[1]="flow_test.go v1_test.go"
	[2]="flow_test.go v2_test.go nocard_test.go before6_test.go"
	[3]="flow_test.go v2_test.go card_test.go before6_test.go"
	[4]="flow_test.go v2_test.go card_test.go before6_test.go"
	[5]="flow_test.go v2_test.go card_test.go before6_test.go"
	[6]="flow_test.go v2_test.go card_test.go v6_test.go"
	[7]="flow_test.go v2_test.go card_test.go v6_test.go"
	[8]="flow_test.go v2_test.go card_test.go v6_test.go"
	[9]="flow_test.go v2_test.go card_test.go v6_test.go"
	[10]="flow_test.go v2_test.go card_test.go v6_test.go"
)
# From schema 5 on, the guest's flow lives in internal/guest (issue 20):
# the files are written against client.Guest and moved over by sed.
guestpkg=5

here=$(cd "$(dirname "$0")" && pwd)
repo=$(git -C "$here" rev-parse --show-toplevel)
admin=${SHARESPOT_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}
versions=("$@")
[ ${#versions[@]} -gt 0 ] || mapfile -t versions < <(printf '%s\n' "${!commit[@]}" | sort -n)

tmp=$(mktemp -d)
src=$tmp/src
db=""
cleanup() {
	[ -z "$db" ] || psql -q "$admin" -c "DROP DATABASE IF EXISTS $db" || true
	git -C "$repo" worktree remove --force "$src" 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT

for n in "${versions[@]}"; do
	c=${commit[$n]:?no commit for schema $n}
	echo "== schema $n from $c"
	out=$tmp/out$n
	mkdir -p "$out" "$here/v$n"
	git -C "$repo" worktree add -q --detach "$src" "$c"
	[ "$(ls "$src/internal/store/migrations" | grep "\.sql$" | tail -1 | cut -c1-4)" = "$(printf %04d "$n")" ] ||
		{ echo "commit $c's newest migration is not $n" >&2; exit 1; }
	mkdir "$src/internal/upgradefixture"
	for f in ${files[$n]}; do cp "$here/generate/$f" "$src/internal/upgradefixture/"; done
	if [ "$n" -ge "$guestpkg" ]; then
		sed -i -e 's/client\.Guest/guest.Guest/g' \
			-e 's#^\(\t"github.com/sharespot/sharespot/internal/client"\)$#\1\n\t"github.com/sharespot/sharespot/internal/guest"#' \
			"$src/internal/upgradefixture/flow_test.go"
	fi
	# A skipped TestMakeFixture says ok too: look for its PASS.
	run() { (cd "$src" && env -u SHARESPOT_TEST_DB -u CI SHARESPOT_FIXTURE_OUT="$out" "$@" \
		go test -count=1 -v -run '^TestMakeFixture$' ./internal/upgradefixture/) >"$out/log" 2>&1 ||
		{ cat "$out/log"; exit 1; }
		grep -q -- '--- PASS: TestMakeFixture' "$out/log" || { cat "$out/log"; echo "TestMakeFixture did not pass" >&2; exit 1; }; }

	run
	sqlite3 "$out/sqlite/sharespot.db" 'PRAGMA journal_mode=DELETE;' 'VACUUM;' >/dev/null
	gzip -9n <"$out/sqlite/sharespot.db" >"$here/v$n/sharespot.db.gz"

	db=sharespot_fixture_${n}_$$
	psql -q "$admin" -c "CREATE DATABASE $db"
	url=$(sed -E "s#^([^?]*/)[^/?]*#\1$db#" <<<"$admin") # the admin URL's database replaced
	run SHARESPOT_FIXTURE_DB="$url"
	pg_dump --no-owner --no-privileges --column-inserts "$url" >"$here/v$n/postgres.sql"
	psql -q "$admin" -c "DROP DATABASE $db"
	db=""

	if [ -f "$out/platform.key" ]; then cp "$out/platform.key" "$here/v$n/platform.key"; fi
	git -C "$repo" worktree remove --force "$src"
	ls -l "$here/v$n"
done
