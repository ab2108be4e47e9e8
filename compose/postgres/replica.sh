#!/bin/sh
# Entrypoint of the compose stack's read replica (docker compose --profile
# replica). On a fresh volume it copies the primary with pg_basebackup
# --write-recovery-conf, which leaves standby.signal and primary_conninfo
# behind, so the server it then starts streams the primary's changes and
# serves reads only. On a volume it made before, it just starts. The
# image's own entrypoint starts the server: as the postgres user, with the
# copied data it finds (it initialises nothing then).
set -eu

PGDATA=${PGDATA:-/var/lib/postgresql/data}
# Debian-built images (CI's stand-ins) keep the binaries off PATH.
for d in /usr/lib/postgresql/*/bin; do
	if [ -d "$d" ]; then PATH=$PATH:$d; fi
done
export PATH

if [ ! -s "$PGDATA/PG_VERSION" ]; then
	mkdir -p "$PGDATA"
	# PGPASSWORD comes from the environment; the primary may still be
	# starting when this one does.
	until pg_basebackup --host="${PRIMARY_HOST:-postgres}" --username="${PRIMARY_USER:-payservice}" \
		--pgdata="$PGDATA" --write-recovery-conf --wal-method=stream --checkpoint=fast; do
		echo "replica: the primary is not ready; retrying in 2s" >&2
		find "$PGDATA" -mindepth 1 -delete
		sleep 2
	done
	echo "replica: copied the primary; starting as its standby" >&2
fi
exec docker-entrypoint.sh postgres
