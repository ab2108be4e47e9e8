#!/bin/sh
# Entrypoint of the payservice-standin/postgres and payservice-standin/redis
# images (Debian packages imported by .ci/offline/images/standins.sh; CI cannot pull
# the official images). It honours the official postgres image's contract as
# far as testcontainers-go's postgres module and docker compose need:
#   POSTGRES_USER (default postgres), POSTGRES_PASSWORD, POSTGRES_DB (default
#   $POSTGRES_USER), POSTGRES_HOST_AUTH_METHOD, POSTGRES_INITDB_ARGS, PGDATA,
#   and *.sql / *.sql.gz / *.sh in /docker-entrypoint-initdb.d on first start.
# Any command that is not a server (pg_isready, psql, sh, ...) is exec'd as is.
set -eu

# Debian keeps the versioned binaries (initdb, pg_ctl, postgres) off PATH.
case :$PATH: in
*:/usr/lib/postgresql/15/bin:*) ;;
*) PATH=/usr/lib/postgresql/15/bin:$PATH && export PATH ;;
esac

# Bare options start this image's server, as in the official images:
# `IMAGE -c fsync=off` is `postgres -c fsync=off`; for the redis image
# (STANDIN_SERVER=redis-server) `IMAGE --loglevel debug` and `IMAGE x.conf`
# (testcontainers' redis module passes args and config files like that).
server=${STANDIN_SERVER:-postgres}
case ${1:-} in
-*) set -- "$server" "$@" ;;
*.conf) if [ "$server" = redis-server ]; then set -- "$server" "$@"; fi ;;
esac

if [ "${1:-}" = redis-server ]; then
	# The official redis image is compiled with protected mode off; Debian's
	# is not, and would refuse clients coming through docker's port proxy.
	case " $* " in
	*" --protected-mode "*) ;;
	*) set -- "$@" --protected-mode no ;;
	esac
	exec "$@"
fi
if [ "${1:-}" != postgres ]; then
	exec "$@"
fi

PGDATA=${PGDATA:-/var/lib/postgresql/data}
POSTGRES_USER=${POSTGRES_USER:-postgres}
POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}
export PGDATA POSTGRES_USER POSTGRES_DB

# postgres refuses to run as root: as root, fix ownership of the data and
# socket directories (a fresh volume is root-owned), then re-run this script
# as the postgres user. setpriv is in util-linux, which minbase includes.
if [ "$(id -u)" = 0 ]; then
	mkdir -p "$PGDATA" /var/run/postgresql
	find "$PGDATA" ! -user postgres -exec chown postgres:postgres {} +
	chmod 700 "$PGDATA"
	chown postgres:postgres /var/run/postgresql
	chmod 3777 /var/run/postgresql
	HOME=/var/lib/postgresql
	export HOME
	exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

# sql [DB [PSQL-ARGS]]: run SQL from stdin over the local socket, stopping on errors.
sql() {
	db=${1:-postgres}
	if [ $# -gt 0 ]; then shift; fi
	psql -v ON_ERROR_STOP=1 --no-psqlrc -q --username="$POSTGRES_USER" \
		--dbname="$db" "$@"
}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
	auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
	pwopt=
	if [ -n "${POSTGRES_PASSWORD:-}" ]; then
		pwfile=$(mktemp)
		printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
		pwopt=--pwfile=$pwfile
	elif [ "$auth" != trust ]; then
		echo "error: set POSTGRES_PASSWORD (or POSTGRES_HOST_AUTH_METHOD=trust)" >&2
		exit 1
	fi
	# Local socket: trust (init scripts, docker exec psql); TCP: password.
	# shellcheck disable=SC2086 # pwopt and POSTGRES_INITDB_ARGS are word lists
	initdb --username="$POSTGRES_USER" $pwopt --encoding=UTF8 --locale=C.UTF-8 \
		--auth-local=trust --auth-host="$auth" ${POSTGRES_INITDB_ARGS:-}
	rm -f "${pwfile:-}"
	# initdb only admits TCP clients from loopback; admit any host, and
	# listen on all addresses, as the official image does.
	printf '\nhost all all all %s\n' "$auth" >>"$PGDATA/pg_hba.conf"
	printf "\nlisten_addresses = '*'\n" >>"$PGDATA/postgresql.conf"

	# Like the official image, initialise through a temporary server that
	# listens on the socket only, so no TCP client sees a half-made database.
	# It logs "database system is ready to accept connections" once and the
	# real server logs it again: testcontainers' postgres wait strategy waits
	# for exactly two such lines. The server args (e.g. -c config_file=...)
	# are forwarded, ours last so they win; pg_ctl -o takes a shell string.
	shift
	opts=
	for a in "$@"; do
		opts="$opts'$(printf '%s' "$a" | sed "s/'/'\\\\''/g")' "
	done
	pg_ctl -D "$PGDATA" -w -o "$opts-c listen_addresses='' -p 5432" start
	if [ "$POSTGRES_DB" != postgres ]; then
		# psql variables quote the name safely (:"db" is an identifier).
		echo 'CREATE DATABASE :"db";' | sql postgres -v db="$POSTGRES_DB"
	fi
	for f in /docker-entrypoint-initdb.d/*; do
		case $f in
		*.sh) echo "running $f"; if [ -x "$f" ]; then "$f"; else bash "$f"; fi ;;
		*.sql) echo "running $f"; sql "$POSTGRES_DB" <"$f" ;;
		*.sql.gz) echo "running $f"; gzip -dc "$f" | sql "$POSTGRES_DB" ;;
		*) if [ -e "$f" ]; then echo "ignoring $f"; fi ;;
		esac
	done
	pg_ctl -D "$PGDATA" -m fast -w stop
	echo "PostgreSQL init process complete; ready for start up."
	set -- postgres "$@"
fi

exec "$@"
