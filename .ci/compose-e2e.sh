#!/usr/bin/env bash
# make compose-e2e: the container delivery, end to end. Build the server's
# image on its own (and hold it to its size budget and its contents: the
# server, no fake provider), bring the whole stack up with the README's
# command, run `make smoke` against it, check the read replica and the
# observability profile's Prometheus (its Grafana too where its image can be
# had), and tear it all down again, also when something fails.
#
# Needs Docker with the compose plugin and the images docker-compose.yml
# names. GO_IMAGE, RUNTIME_IMAGE, POSTGRES_IMAGE, REDIS_IMAGE,
# PROMETHEUS_IMAGE and BUILD_NETWORK replace compose's defaults
# (.ci/offline/prepare.sh sets them on a machine without a registry, which
# has no Grafana image: Grafana is then not started).
set -euo pipefail
cd "$(dirname "$0")/.." # the repository root
# shellcheck source=SCRIPTDIR/lib.sh
. .ci/lib.sh

start=$SECONDS
step() { printf '\n==> %s  [+%ss]\n' "$*" "$((SECONDS - start))"; }

IMAGE=payservice:dev     # the image: name in docker-compose.yml
MAX_IMAGE_BYTES=25000000 # 25 MB, in the decimal units `docker images` shows
BUILD_LABEL=payservice-ci.build=standalone # marks this script's own docker build
# A project name of its own: CI's containers, network and volume never
# touch (or take down) a developer's `docker compose up` stack.
export COMPOSE_PROJECT_NAME=payservice-ci
# Every profile the script starts services of, for ps, logs and down.
PROFILES=(--profile replica --profile observability)
PROMETHEUS=http://127.0.0.1:9091 # where docker-compose.yml publishes it
GRAFANA=http://127.0.0.1:3000

stack_up=
# finish: on any exit, show what went wrong and take the stack down, so a
# failed run leaves no containers or volumes behind for the next one.
finish() {
	local rc=$?
	if [ -n "$stack_up" ]; then
		if [ "$rc" -ne 0 ]; then
			step "docker compose logs (the run failed)"
			docker compose "${PROFILES[@]}" ps --all || true
			docker compose "${PROFILES[@]}" logs --no-color --tail 100 || true
		fi
		step "docker compose down"
		docker compose "${PROFILES[@]}" down --volumes --remove-orphans || true
	fi
	# Every build re-tags $IMAGE and leaves the image it replaced dangling
	# (compose even builds one per service). Prune only this script's:
	# dangling, and labelled by its standalone build or its compose project.
	docker image prune --force --filter "label=$BUILD_LABEL" >/dev/null || true
	docker image prune --force --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" >/dev/null || true
	if [ "$rc" -eq 0 ]; then step "done"; else log "compose-e2e FAILED (exit $rc)"; fi
}
trap finish EXIT

step "Go toolchain and Docker"
command -v go >/dev/null || export PATH="/usr/local/go/bin:$PATH"
go version
docker compose version
# Unset, each is docker-compose.yml's default (the official image).
for v in GO_IMAGE RUNTIME_IMAGE POSTGRES_IMAGE REDIS_IMAGE PROMETHEUS_IMAGE GRAFANA_IMAGE BUILD_NETWORK; do
	echo "$v=${!v:-(compose default)}"
done

step "docker build $IMAGE (standalone)"
# The same network as compose's builds (BUILD_NETWORK). A bare --build-arg
# NAME takes the value from the environment, if set. No VERSION: the same
# build as compose's, so `up --build` below finds every step cached.
docker build --network "${BUILD_NETWORK:-default}" --build-arg GO_IMAGE --build-arg RUNTIME_IMAGE \
	--label "$BUILD_LABEL" -t "$IMAGE" .
docker images "$IMAGE" --format 'table {{.Repository}}:{{.Tag}}\t{{.ID}}\t{{.Size}}'
size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
[ "$size" -le "$MAX_IMAGE_BYTES" ] ||
	die "$IMAGE is $size bytes, over the budget of $MAX_IMAGE_BYTES: what got into it?"
echo "size $size bytes, within the budget of $MAX_IMAGE_BYTES"
# The image that goes to production holds the server and nothing that could
# fake a provider (the Dockerfile's fakeprovider target builds that one).
container=$(docker create "$IMAGE")
files=$(docker export "$container" | tar -t)
docker rm "$container" >/dev/null
grep -qx server <<<"$files" || die "$IMAGE has no /server"
! grep -q fakeprovider <<<"$files" || die "$IMAGE ships the fake provider: $(grep fakeprovider <<<"$files")"
echo "$IMAGE holds /server and no fake provider"

step "docker compose up --build (the README's command, detached, waiting for health)"
# Leftovers of a run killed before its trap ran would clash with this one.
docker compose "${PROFILES[@]}" down --volumes --remove-orphans
stack_up=1
# --detach --wait: CI must go on once every service passes its healthcheck.
docker compose up --build --detach --wait --wait-timeout 180
docker compose ps

step "make smoke"
make smoke

step "read replica (docker compose --profile replica): the app reads from it"
command -v curl >/dev/null || apt_install curl
# Added to the running stack: the replica copies the primary, which smoke
# has just written to, and streams from it.
docker compose --profile replica up --detach --wait --wait-timeout 120 postgres-replica
replica_sql() { docker compose --profile replica exec -T postgres-replica psql -U payservice -d payservice -tAc "$1"; }
[ "$(replica_sql 'SELECT pg_is_in_recovery()')" = t ] || die "postgres-replica is not a standby"
copied=$(replica_sql 'SELECT count(*) FROM payments')
[ "$copied" -gt 0 ] || die "postgres-replica has no payments: it did not copy the primary"
echo "the replica is a standby with the primary's $copied payments"
# The app measures the replica's lag every 250ms and reads from it once
# the lag is known and small: GETs must reach it within seconds.
reads_on_replica() {
	curl -fsS http://127.0.0.1:9090/metrics | awk '/^payservice_postgres_reads_total\{pool="replica"\}/ {print $2}'
}
for i in $(seq 1 40); do
	curl -fsS -o /dev/null -H 'Authorization: Bearer dev_key_do_not_use_in_production' 'http://127.0.0.1:8080/v1/payments?limit=1' || true
	n=$(reads_on_replica || true)
	if [ "${n%.*}" -gt 0 ] 2>/dev/null; then break; fi
	sleep 0.5
done
[ "${n%.*}" -gt 0 ] 2>/dev/null || die "no read reached the replica in 20s (payservice_postgres_reads_total{pool=\"replica\"} = ${n:-absent})"
echo "reads served by the replica: $n; lag: $(curl -fsS http://127.0.0.1:9090/metrics | awk '/^payservice_postgres_replica_lag_seconds / {print $2}')s"

# eventually SECONDS WHAT CMD...: run CMD each second until it succeeds;
# after SECONDS, stop, saying WHAT did not happen and what CMD printed last.
eventually() {
	local seconds=$1 what=$2 out
	shift 2
	local deadline=$((SECONDS + seconds))
	until out=$("$@" 2>&1); do
		[ "$SECONDS" -lt "$deadline" ] || die "$what: not within ${seconds}s. Last: $out"
		sleep 1
	done
}

step "Prometheus (docker compose --profile observability): the rules, the app's targets, its metrics"
command -v jq >/dev/null || apt_install jq
# Prometheus only: Grafana's image may be missing (below).
docker compose --profile observability up --detach --wait --wait-timeout 60 prometheus
# prom_api PATH [CURL ARGS...]: the data of a GET on Prometheus' HTTP API.
prom_api() {
	local path=$1
	shift
	curl -fsS -G "$@" "$PROMETHEUS/api/v1/$path" | jq -e .data
}
# Every target of the job "payservice" (the app's admin port) scraped.
targets() {
	prom_api targets --data-urlencode state=active |
		jq -c '[.activeTargets[] | select(.labels.job == "payservice") | {instance: .labels.instance, health, lastError}]'
}
targets_up() {
	local t
	t=$(targets) || return 1
	jq -e 'length > 0 and all(.health == "up")' <<<"$t" >/dev/null && return 0
	printf '%s\n' "$t"
	return 1
}
# 45s: the first scrape comes within a scrape_interval (15s) of the start.
eventually 45 "every payservice target up" targets_up
echo "targets up: $(targets | jq -r 'map(.instance) | join(", ")')"
# As many rules as rules.yml declares (each a mapping with a record or an
# alert key), none failing, in an evaluation of each group later than the
# scrape above: before it, on no data, a broken rule may still pass.
declared=$(grep -cE '^[[:space:]]*(- )?(record|alert):' observability/prometheus/rules.yml || true)
[ "${declared:-0}" -gt 0 ] || die "observability/prometheus/rules.yml declares no rule (make generate writes it)"
scraped_before=$(prom_api rules | jq -c '.groups | map({(.name): .lastEvaluation}) | add // {}')
# A condition of `eventually`: it returns, never dies, and prints what it saw.
rules_evaluated() {
	local groups
	groups=$(prom_api rules | jq -c .groups) || return 1
	jq -e --argjson n "$declared" --argjson before "$scraped_before" '
		all(.lastEvaluation != $before[.name])
		and ([.[].rules[]] | length == $n and all(.health == "ok"))' <<<"$groups" >/dev/null && return 0
	jq -c '{loaded: ([.[].rules[]] | length), not_ok: [.[].rules[] | select(.health != "ok") | {name, health, lastError}]}' <<<"$groups"
	return 1
}
# 45s: each group is evaluated every 15s.
eventually 45 "Prometheus evaluating the $declared rules of rules.yml, none failing" rules_evaluated
echo "rules: the $declared of rules.yml loaded and evaluated on scraped data, none failing"
# The app's own series: smoke's requests and the replica check's.
n=$(prom_api query --data-urlencode 'query=sum(payservice_http_requests_total)' | jq -r '.result[0].value[1] // empty')
[ "${n:-0}" != 0 ] || die "Prometheus has no requests in payservice_http_requests_total (sum: ${n:-no series})"
echo "sum(payservice_http_requests_total) in Prometheus: $n"

step "Grafana (docker compose --profile observability): the dashboard, through the provisioned data source"
grafana_image=$(docker compose --profile observability config --format json | jq -r .services.grafana.image)
if have_image "$grafana_image" || timeout 60 docker pull -q "$grafana_image" >/dev/null 2>&1; then
	docker compose --profile observability up --detach --wait --wait-timeout 120 grafana
	eventually 60 "Grafana answering on $GRAFANA" curl -fsS -o /dev/null "$GRAFANA/api/health"
	# As the anonymous viewer: no credentials anywhere below.
	curl -fsS "$GRAFANA/api/dashboards/uid/payservice" | jq -e .meta.provisioned >/dev/null ||
		die "Grafana has no provisioned dashboard with uid payservice"
	home=$(curl -fsS "$GRAFANA/api/dashboards/home" | jq -r .dashboard.uid)
	[ "$home" = payservice ] || die "Grafana's home dashboard has uid ${home:-none}, want payservice"
	curl -fsS -H 'Content-Type: application/json' "$GRAFANA/api/ds/query" -d '{
		"from": "now-5m", "to": "now",
		"queries": [{"refId": "A", "datasource": {"type": "prometheus", "uid": "prometheus"},
			"expr": "sum(payservice_http_requests_total)", "instant": true, "range": false}]
	}' | jq -e '.results.A | .error == null and (.frames | length > 0)' >/dev/null ||
		die "a query through Grafana's data source prometheus returned nothing"
	echo "Grafana: the dashboard payservice is provisioned and home; its data source answers"
else
	# Said, not passed over in silence: this run did not check Grafana.
	log "Grafana NOT checked: no $grafana_image here and no registry to pull it from (deploy_test checks its provisioning files)"
fi
