// Package writepath measures payservice's write path side by side with a
// bare handler, in one run. It is a test harness and nothing else: run it
// from bench/ with Docker (Postgres and Redis come from testcontainers
// through internal/platform/testenv):
//
//	go test ./writepath -run WritePath -v -count=1
//	go test ./writepath -run WritePath -v -count=1 -timeout 30m -args -rounds 9 -duration 10s
//
// Flags (after -args, or directly after the package): -rounds (5),
// -duration (5s per measurement), -clients (32), -warmup (1s), -server (a
// prebuilt server binary instead of building ./cmd/server) and -log-level
// (the service's LOG_LEVEL, warn).
//
// Two HTTP servers, each a process of its own, answer the same requests:
//
//	bare     ../cmd/bare, package ../bare: chi + lib/pq, INSERT, one
//	         provider call, UPDATE; a replay is the INSERT's conflict and a
//	         SELECT. Its doc comment lists what it leaves out.
//	service  payservice's own binary (./cmd/server of the service's module,
//	         built at the start), on a fresh database it migrates itself,
//	         with Redis, API_KEYS=bench:bench_key, LOG_LEVEL=warn (no
//	         access log: at info it logs a line per request, a cost a user
//	         may turn off), inbound rate limits (RATE_LIMIT_PER_SECOND 1e6,
//	         _BURST 1000000) and the provider's quota (PROVIDER_RATE_LIMIT
//	         and _BURST 100000, default 100/s) out of the way, and every
//	         other setting at its default. The harness checks that
//	         `server -h` still lists every variable it sets.
//
// Both call one in-process fake provider (internal/payments/fakeprovider,
// no faults) and one Postgres server, in databases of their own.
//
// Each round measures, for -duration each, with -clients closed-loop
// clients (each sends its next request when the last is answered), bare
// then service, phase by phase:
//
//	new      POST /v1/payments, a new Idempotency-Key per request; correct
//	         is 201
//	replay   the keys the round's new phase created, again (the same body);
//	         correct is 201 with Idempotent-Replayed: true
//	GET      GET /v1/payments/{id} of those payments; correct is 200
//
// after one warm-up of -warmup per phase and server. Only correct answers
// count; anything else is an error, reported separately, and more than 3%
// errors in any measurement fails the test, as does a provider ledger
// with more or fewer charges than new payments. The table shows each
// figure's median over the rounds, the ratio service/bare of the medians
// and the range of the rounds' own ratios, and the goals: new
// payments at ≥ 0.85× the bare handler's throughput and ≤ 1.3× its p50
// latency. The goals are reported, not enforced: this is a measurement.
//
// Besides rates and latencies, it reads each server's CPU time from /proc
// (Linux) and reports CPU per correct answer: the server process's own
// cost, which moves much less than the rates with the machine's other load.
//
// The load generator, the fake provider, both servers, Postgres and Redis
// share the machine's CPUs (two noisy cores where these numbers were
// taken): read the ratios, measured in the same run under the same noise,
// rather than the absolute numbers. The load average is printed at the
// start and the end.
//
// DATABASE_URL (a role allowed to CREATE DATABASE) and REDIS_URL, if both
// are set, replace the containers, as in cmd/overload: with Docker
// publishing ports through its userland proxy (no iptables), every byte to
// Postgres and Redis is copied by one more process on the same cores, and
// host-networked containers avoid that.
package writepath
