#!/usr/bin/env bash
# Print the Go vulnerability database make vuln should read: vuln.go.dev
# when this machine reaches it, else a copy built from the golang.org/x/vulndb
# module (its data/osv reports, as of the pinned version below), which the
# Go module proxy serves where vuln.go.dev cannot be reached. A machine with
# the internet (GitHub Actions) never needs this.
#
# stdout: GOVULNDB=… ; logs go to stderr. The copy is cached per version.
set -euo pipefail
cd "$(dirname "$0")/../.." # the repository root
# shellcheck source=SCRIPTDIR/../lib.sh
. .ci/lib.sh

# The newest the proxy served when this was written; move it forward to
# learn of newer vulnerabilities.
VULNDB_MODULE=golang.org/x/vulndb@v0.0.0-20261105234957-e22db6528018

if curl -fsS --max-time 10 -o /dev/null https://vuln.go.dev/index/db.json 2>/dev/null; then
	log "vuln.go.dev answers: using it"
	echo GOVULNDB=https://vuln.go.dev
	exit 0
fi

db=$CI_CACHE/vulndb-${VULNDB_MODULE##*@}
if ! [ -s "$db/index/db.json" ]; then
	log "vuln.go.dev cannot be reached: building a copy from $VULNDB_MODULE"
	src=$(retry 3 go mod download -json "$VULNDB_MODULE" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	[ -d "$src/data/osv" ] || die "$VULNDB_MODULE has no data/osv: its layout changed"
	rm -rf "$db.tmp"
	mkdir -p "$CI_CACHE"
	# indexdb is the vulndb's own tool for a database from a folder of OSV files.
	go run "${VULNDB_MODULE%@*}/cmd/indexdb@${VULNDB_MODULE##*@}" -vulns "$src/data/osv" -out "$db.tmp" >&2
	mv "$db.tmp" "$db"
fi
log "vuln.go.dev cannot be reached: using the copy of $VULNDB_MODULE ($(find "$db/ID" -name '*.json' | wc -l) reports)"
echo "GOVULNDB=file://$db"
