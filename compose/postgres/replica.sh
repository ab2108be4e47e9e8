#!/bin/sh
# Entrypoint of the compose stack's read replica (docker compose --profile
# replica). On a fresh volume it copies the primary with pg_basebackup
# --write-recovery-conf, which leaves standby.signal and primary_conninfo
# behind, so the server it then starts streams the primary's changes and
# serves reads only. On a volume it copied before, it just starts. The
# image's own entrypoint starts the server: as the postgres user, with the
# copied data it finds (it initialises nothing then).
set -eu

PGDATA=${PGDATA:-/var/lib/postgresql/data}
# Debian-built images (CI's stand-ins) keep the binaries off PATH.
for d in /usr/lib/postgresql/*/bin; do
	if [ -d "$d" ]; then PATH=$PATH:$d; fi
done
export PATH

# The copy is whole once the marker exists: a container stopped halfway
# through pg_basebackup left files (PG_VERSION among the first) that must
# not be started as a database.
marker=$PGDATA/.payservice-copy-complete
if [ ! -e "$marker" ]; then
	mkdir -p "$PGDATA"
	find "$PGDATA" -mindepth 1 -delete
	# PGPASSWORD comes from the environment; the primary may still be
	# starting when this one does.
	until pg_basebackup --host="${PRIMARY_HOST:-postgres}" --username="${PRIMARY_USER:-payservice}" \
		--pgdata="$PGDATA" --write-recovery-conf --wal-method=stream --checkpoint=fast; do
		echo "replica: the primary is not ready; retrying in 2s" >&2
		find "$PGDATA" -mindepth 1 -delete
		sleep 2
	done
	: >"$marker"
	echo "replica: copied the primary; starting as its standby" >&2
fi
exec docker-entrypoint.sh postgres
