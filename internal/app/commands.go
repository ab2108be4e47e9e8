package app

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/resiliencekit/payservice/internal/platform/postgres"
)

// Migrate applies pending migrations and exits: for a Kubernetes Job or a
// deploy step, with replicas started with MIGRATE_ON_START=false. Several
// may run at once; the advisory lock serialises them.
func Migrate(ctx context.Context, getenv func(string) string, stdout io.Writer) error {
	cfg, _, err := Load(getenv, "DATABASE_URL", "LOG_LEVEL", "LOG_FORMAT")
	if err != nil {
		return err
	}
	log := NewLogger(cfg, stdout)
	pool, err := postgres.Open(cfg.Postgres.URL, postgres.PoolConfig{MaxOpenConns: 2, MaxIdleConns: 1, ConnMaxLifetime: time.Minute, ConnMaxIdleTime: time.Minute})
	if err != nil {
		return err
	}
	defer pool.Close()
	migrator, err := postgres.NewMigrator(pool, log, migrations...)
	if err != nil {
		return err
	}
	return migrator.UpAndLog(ctx, log)
}

// Healthcheck asks the local server whether it is ready. It exists because
// distroless images have no shell or curl for a container HEALTHCHECK.
func Healthcheck(ctx context.Context, getenv func(string) string) error {
	cfg, _, err := Load(getenv, "HTTP_ADDR")
	if err != nil {
		return err
	}
	url, err := readyURL(cfg.HTTPAddr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck: %s answered %s", url, resp.Status)
	}
	return nil
}

// readyURL turns a listen address into the URL of its readiness probe,
// using loopback when the address listens on every interface.
func readyURL(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("HTTP_ADDR=%s: %w", addr, err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port) + "/health/ready", nil
}
