#!/usr/bin/env bash
# Pick the Postgres and Redis images for integration tests and compose, and
# the Prometheus image for compose's observability profile. The official
# images when present or pullable; otherwise (no registry, as on our CI)
# stand-ins built from Debian packages: ONE debootstrap rootfs holding
# postgresql-15 and redis-server, imported twice under different defaults,
# and a third time with the binary of Debian's prometheus package. Grafana
# has no Debian package, hence no stand-in: CI does not start it.
# stdout: NAME=image lines for .ci/run to export; logs go to stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=SCRIPTDIR/../../lib.sh
. "$here/../../lib.sh"

PG_OFFICIAL=${TEST_POSTGRES_IMAGE:-postgres:17-alpine}
REDIS_OFFICIAL=${TEST_REDIS_IMAGE:-redis:7-alpine}
PROMETHEUS_OFFICIAL=${PROMETHEUS_IMAGE:-prom/prometheus:v3.13.2}
PG_STANDIN=payservice-standin/postgres:15
REDIS_STANDIN=payservice-standin/redis:7
PROMETHEUS_STANDIN=payservice-standin/prometheus:2
ENTRYPOINT=$here/postgres-entrypoint.sh
# Rebuild the stand-ins when this script or the entrypoint changes.
REV=$(rev "$0" "$ENTRYPOINT")
BASE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# rootfs: the path of the one rootfs tarball all three stand-ins import.
rootfs() { rootfs_tarball standin postgresql-15,redis-server; }

# import_tar: path of the rootfs tarball plus our additions (entrypoint,
# /docker-entrypoint-initdb.d for testcontainers' WithInitScripts, /data for
# redis). The cached tarball stays pristine; a copy gets the additions.
import_tar() {
	local t=$work/import.tar src
	if [ ! -e "$t" ]; then
		src=$(rootfs)
		cp "$src" "$t"
		mkdir -p "$work/add/usr/local/bin" "$work/add/docker-entrypoint-initdb.d" "$work/add/data"
		install -m 0755 "$ENTRYPOINT" "$work/add/usr/local/bin/docker-entrypoint.sh"
		tar -rf "$t" -C "$work/add" --owner=0 --group=0 --numeric-owner \
			./usr/local/bin/docker-entrypoint.sh ./docker-entrypoint-initdb.d ./data
	fi
	printf '%s\n' "$t"
}

# Both images share the entrypoint; the label records what built them.
common=(
	-c 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]'
	-c 'ENV LANG=C.UTF-8' # minbase has no locales but glibc's built-in C.UTF-8
	-c "LABEL $REV_LABEL=$REV"
)

build_postgres() {
	local t
	t=$(import_tar)
	# PATH: put postgres, initdb, pg_isready, psql on PATH also for
	#   `docker exec` (compose healthchecks), which skips the entrypoint.
	docker import "${common[@]}" \
		-c 'CMD ["postgres"]' \
		-c "ENV PATH=/usr/lib/postgresql/15/bin:$BASE_PATH" \
		-c 'ENV PGDATA=/var/lib/postgresql/data' \
		-c 'EXPOSE 5432' \
		"$t" "$PG_STANDIN" >/dev/null
	# STOPSIGNAL SIGINT (fast shutdown; SIGTERM waits for every client to
	# disconnect), as the official image: `docker import -c` rejects
	# STOPSIGNAL, so add it with a one-line Dockerfile build.
	printf 'FROM %s\nSTOPSIGNAL SIGINT\n' "$PG_STANDIN" |
		quiet_build -t "$PG_STANDIN" -
	log "built $PG_STANDIN"
}

build_redis() {
	local t
	t=$(import_tar)
	# STANDIN_SERVER: bare options (`IMAGE --loglevel debug`) start redis.
	# --save "": no snapshots (tests); --protected-mode no, --bind 0.0.0.0:
	#   accept clients through docker's port proxy, like the official image.
	docker import "${common[@]}" \
		-c 'CMD ["redis-server","--save","","--protected-mode","no","--bind","0.0.0.0"]' \
		-c "ENV PATH=$BASE_PATH" \
		-c 'ENV STANDIN_SERVER=redis-server' \
		-c 'WORKDIR /data' \
		-c 'EXPOSE 6379' \
		"$t" "$REDIS_STANDIN" >/dev/null
	log "built $REDIS_STANDIN"
}

# build_prometheus: the rootfs (for its glibc: Debian's binary is linked
# against it) plus /usr/bin/prometheus, which is also /bin/prometheus, the
# official image's entrypoint (/bin links to usr/bin). Taken from the
# package file, not installed on this machine: Debian would start the
# service, on the :9090 where compose publishes the app's admin port.
build_prometheus() {
	local t=$work/prometheus.tar add=$work/prometheus src
	mkdir -p "$add/prometheus"
	apt-cache show prometheus >/dev/null 2>&1 || retry 3 apt-get update -qq >&2
	# Sandbox user root: apt's _apt user cannot write into $work.
	(cd "$work" && retry 3 apt-get download -qq -o APT::Sandbox::User=root prometheus >&2)
	dpkg-deb --fsys-tarfile "$work"/prometheus_*.deb | tar -x -C "$add" ./usr/bin/prometheus
	src=$(rootfs)
	cp "$src" "$t"
	tar -rf "$t" -C "$add" --owner=0 --group=0 --numeric-owner ./usr/bin/prometheus
	# /prometheus: the data directory, owned by nobody, who runs the server.
	tar -rf "$t" -C "$add" --owner=65534 --group=65534 --numeric-owner ./prometheus
	# As the official image: run as nobody in /prometheus, the same flags.
	docker import -c "LABEL $REV_LABEL=$REV" \
		-c 'ENTRYPOINT ["/bin/prometheus"]' \
		-c 'CMD ["--config.file=/etc/prometheus/prometheus.yml","--storage.tsdb.path=/prometheus"]' \
		-c 'USER nobody' \
		-c 'WORKDIR /prometheus' \
		-c 'EXPOSE 9090' \
		"$t" "$PROMETHEUS_STANDIN" >/dev/null
	log "built $PROMETHEUS_STANDIN ($(docker run --rm "$PROMETHEUS_STANDIN" --version 2>&1 | head -n 1))"
}

pg=$(choose_image "$PG_OFFICIAL" "$PG_STANDIN" "$REV" build_postgres)
redis=$(choose_image "$REDIS_OFFICIAL" "$REDIS_STANDIN" "$REV" build_redis)
prometheus=$(choose_image "$PROMETHEUS_OFFICIAL" "$PROMETHEUS_STANDIN" "$REV" build_prometheus)

# Same images for testcontainers (TEST_*) and for docker compose.
printf '%s\n' "TEST_POSTGRES_IMAGE=$pg" "TEST_REDIS_IMAGE=$redis" \
	"POSTGRES_IMAGE=$pg" "REDIS_IMAGE=$redis" "PROMETHEUS_IMAGE=$prometheus"
