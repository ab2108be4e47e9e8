// Command bare serves the write-path benchmark's baseline, package bare: a
// bare chi + lib/pq payment handler. The benchmark (../../writepath) runs
// it as a process, as it runs payservice's server, so that each has a Go
// runtime and heap of its own and neither shares one with the load
// generator.
//
//	DATABASE_URL=postgres://… PROVIDER_URL=http://… HTTP_ADDR=127.0.0.1:8080 bare
//
// It creates its table, then listens; SIGTERM or SIGINT stops it.
package main

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	_ "github.com/lib/pq"

	"github.com/resiliencekit/payservice/bench/bare"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Getenv("DATABASE_URL"), os.Getenv("PROVIDER_URL"), cmp.Or(os.Getenv("HTTP_ADDR"), "127.0.0.1:8080"))
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bare:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, databaseURL, providerURL, addr string) error {
	if databaseURL == "" || providerURL == "" {
		return errors.New("DATABASE_URL and PROVIDER_URL must be set")
	}
	db, err := sql.Open("postgres", databaseURL)
	if err != nil {
		return err
	}
	defer db.Close()
	bare.ConfigurePool(db)
	if _, err := db.ExecContext(ctx, bare.Schema); err != nil {
		return fmt.Errorf("create the table: %w", err)
	}
	srv := &http.Server{
		Addr:              addr,
		Handler:           bare.New(db, providerURL, bare.NewProviderClient()),
		ReadHeaderTimeout: 5 * time.Second,
	}
	served := make(chan error, 1)
	go func() { served <- srv.ListenAndServe() }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return srv.Shutdown(shutdownCtx)
}
