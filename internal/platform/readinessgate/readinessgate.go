// Package readinessgate sets a Kubernetes readiness gate: a condition on
// the service's own pod, named in the pod's spec.readinessGates, that the
// service sets True itself once it is ready to serve and False at SIGTERM,
// so the pod leaves its Services' endpoints at once instead of after
// failed readiness probes. The trade-off is a dependency at start-up: the
// pod is not Ready until the API server has accepted the condition, which
// needs RBAC to patch the pod's status. It speaks to the API server with
// net/http rather than client-go: one PATCH request does not justify
// client-go's ~40 modules and several MB of binary; the cost is that it
// re-reads the service account's token itself and writes that one
// endpoint's JSON by hand.
package readinessgate

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync/atomic"
	"time"

	"github.com/resiliencekit/payservice/internal/platform/config"
)

// Config names the condition and the pod it is set on.
type Config struct {
	Condition    string // the condition's type; "" turns the gate off
	PodName      string
	PodNamespace string
}

// Bind declares READINESS_GATE_CONDITION, POD_NAME and POD_NAMESPACE,
// after b's prefix.
func (c *Config) Bind(b *config.Binder) {
	b.String("READINESS_GATE_CONDITION", &c.Condition, "pod condition this service sets True once its schema is current and False at SIGTERM, for a Kubernetes readiness gate; empty: off")
	b.String("POD_NAME", &c.PodName, "this pod's name (the downward API); needed with READINESS_GATE_CONDITION")
	b.String("POD_NAMESPACE", &c.PodNamespace, "this pod's namespace (the downward API); needed with READINESS_GATE_CONDITION")
}

// A condition type is a Kubernetes qualified name: a name, optionally
// after a DNS subdomain and a slash (example.com/ready).
var (
	prefixPattern = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	namePattern   = regexp.MustCompile(`^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$`)
)

// Check reports what a gate that is on lacks, and a condition Kubernetes
// would refuse.
func (c Config) Check() []error {
	if c.Condition == "" {
		return nil
	}
	var errs []error
	if c.PodName == "" {
		errs = append(errs, errors.New("POD_NAME must be set when READINESS_GATE_CONDITION is: give it from the downward API (fieldRef metadata.name)"))
	}
	if c.PodNamespace == "" {
		errs = append(errs, errors.New("POD_NAMESPACE must be set when READINESS_GATE_CONDITION is: give it from the downward API (fieldRef metadata.namespace)"))
	}
	if !qualifiedName(c.Condition) {
		errs = append(errs, fmt.Errorf("READINESS_GATE_CONDITION=%q is not a condition type Kubernetes accepts: a name of at most 63 letters, digits, '-', '_' or '.', optionally after a DNS subdomain and '/' (example.com/ready)", c.Condition))
	}
	return errs
}

func qualifiedName(s string) bool {
	prefix, n, ok := strings.Cut(s, "/")
	if !ok {
		n = s
	} else if len(prefix) > 253 || !prefixPattern.MatchString(prefix) {
		return false
	}
	return len(n) <= 63 && namePattern.MatchString(n)
}

// Where a pod's service account is mounted, unless
// automountServiceAccountToken is false.
const (
	TokenFile = "/var/run/secrets/kubernetes.io/serviceaccount/token"
	CAFile    = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
)

// API is where, and as whom, the gate reaches the Kubernetes API.
type API struct {
	URL       string       // https://host:port
	TokenFile string       // the bearer token, read for every request
	Client    *http.Client // trusts the API server's certificate
}

// requestTimeout bounds one PATCH: the API server answers in
// milliseconds, and one that hangs must not stall the retries.
const requestTimeout = 5 * time.Second

// InCluster returns the API of the cluster the process runs in, as its
// pod's service account, from the variables and files Kubernetes gives
// every pod.
func InCluster(getenv func(string) string) (API, error) {
	host, port := getenv("KUBERNETES_SERVICE_HOST"), getenv("KUBERNETES_SERVICE_PORT")
	if host == "" {
		return API{}, errors.New("KUBERNETES_SERVICE_HOST is not set: not running in a Kubernetes pod?")
	}
	if port == "" {
		return API{}, errors.New("KUBERNETES_SERVICE_PORT is not set: not running in a Kubernetes pod?")
	}
	ca, err := os.ReadFile(CAFile)
	if err != nil {
		return API{}, fmt.Errorf("read the service account's CA: %w: is automountServiceAccountToken false? (the readiness-gate component turns it on)", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ca) {
		return API{}, fmt.Errorf("%s holds no PEM certificate", CAFile)
	}
	return API{
		URL:       "https://" + net.JoinHostPort(host, port), // the host may be IPv6
		TokenFile: TokenFile,
		Client: &http.Client{
			Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}},
			Timeout:   requestTimeout,
		},
	}, nil
}

// ErrForbidden means the API server refused the PATCH: the service account
// lacks the RBAC for it.
var ErrForbidden = errors.New("the service account may not patch pods/status")

// errWithdrawn ends a Declare that comes after Withdraw.
var errWithdrawn = errors.New("readiness gate withdrawn")

// Retries of Declare: soon at first, as a Role bound a moment late is the
// likely cause, then every 5 s; a failure is logged at most every 30 s.
const (
	firstRetry         = 250 * time.Millisecond
	maxRetry           = 5 * time.Second
	failureLogInterval = 30 * time.Second
)

// Gate sets its condition on its pod: True with Declare, False with
// Withdraw. Start-up and SIGTERM race, so each PATCH holds a lock: a
// Withdraw that starts while a Declare's PATCH is in flight waits for it,
// and no Declare sends anything after a Withdraw. The False always lands
// after any True.
//
// A nil *Gate is a gate turned off: its methods do nothing and return nil,
// so the service calls them whether or not it has one.
type Gate struct {
	cfg          Config
	api          API
	fieldManager string
	log          *slog.Logger

	// turn is the lock held across each PATCH: a channel, so that waiting
	// for it ends with the caller's context.
	turn      chan struct{}
	withdrawn atomic.Bool

	// Replaced by tests.
	now     func() time.Time
	wait    func(context.Context, time.Duration) error // between Declare's attempts
	waiting func()                                     // a PATCH waits for another in flight
}

// New returns a gate that sets cfg.Condition through api. fieldManager
// names the writer in the pod's managedFields (the service's name), so
// `kubectl get pod --show-managed-fields` shows who set the condition.
func New(cfg Config, api API, fieldManager string, log *slog.Logger) *Gate {
	return &Gate{
		cfg: cfg, api: api, fieldManager: fieldManager, log: log,
		turn: make(chan struct{}, 1),
		now:  time.Now, wait: sleep, waiting: func() {},
	}
}

// Declare sets the condition True, retrying with capped exponential
// backoff until the API server accepts it or ctx ends; it returns nil, or
// ctx's error. The first failure is logged as an error, later ones as
// warnings at most every 30 s. After Withdraw, it returns nil at once.
func (g *Gate) Declare(ctx context.Context) error {
	if g == nil {
		return nil
	}
	var logged time.Time // when a failure was last logged
	delay := firstRetry
	for attempt := 1; ; attempt++ {
		err := g.patch(ctx, true)
		switch {
		case errors.Is(err, errWithdrawn):
			return nil
		case err == nil:
			g.log.Info("readiness gate set", "condition", g.cfg.Condition, "attempts", attempt)
			return nil
		case ctx.Err() != nil:
			return ctx.Err()
		}
		if now := g.now(); attempt == 1 || now.Sub(logged) >= failureLogInterval {
			logged = now
			level, msg := slog.LevelWarn, "readiness gate not set; retrying"
			if attempt == 1 {
				level = slog.LevelError
			}
			if errors.Is(err, ErrForbidden) {
				msg = "readiness gate not set: the service account lacks the RBAC to patch its pod's status; retrying"
			}
			g.log.Log(ctx, level, msg, "condition", g.cfg.Condition, "attempt", attempt, "err", err)
		}
		if err := g.wait(ctx, delay); err != nil {
			return err
		}
		delay = min(2*delay, maxRetry)
	}
}

// Withdraw sets the condition False, once, with reason ShuttingDown, and
// makes every later Declare a no-op. A Declare's PATCH in flight is waited
// for, within ctx, so that the False lands last.
func (g *Gate) Withdraw(ctx context.Context) error {
	if g == nil {
		return nil
	}
	g.withdrawn.Store(true) // before waiting: a Declare must not start again
	return g.patch(ctx, false)
}

// patch sends the condition, holding the lock.
func (g *Gate) patch(ctx context.Context, ready bool) error {
	select {
	case g.turn <- struct{}{}:
	default:
		g.waiting()
		select {
		case g.turn <- struct{}{}:
		case <-ctx.Done():
			return fmt.Errorf("wait for the readiness gate's PATCH in flight: %w", ctx.Err())
		}
	}
	defer func() { <-g.turn }()

	c := condition{
		Type:               g.cfg.Condition,
		Status:             "False",
		Reason:             "ShuttingDown",
		Message:            g.fieldManager + " is shutting down",
		LastTransitionTime: g.now().UTC().Format(time.RFC3339),
	}
	if ready {
		if g.withdrawn.Load() {
			return errWithdrawn
		}
		c.Status, c.Reason, c.Message = "True", "Ready", g.fieldManager+" is ready to serve"
	}
	if err := g.send(ctx, c); err != nil {
		return fmt.Errorf("set pod condition %s=%s: %w", c.Type, c.Status, err)
	}
	return nil
}

// condition is a pod condition, as the API server reads it.
type condition struct {
	Type               string `json:"type"`
	Status             string `json:"status"`
	Reason             string `json:"reason"`
	Message            string `json:"message"`
	LastTransitionTime string `json:"lastTransitionTime"`
}

// send PATCHes the pod's status subresource with c.
func (g *Gate) send(ctx context.Context, c condition) error {
	// A strategic merge patch merges the conditions list by type: the
	// kubelet's conditions (Ready, ContainersReady, ...) are left alone.
	var patch struct {
		Status struct {
			Conditions []condition `json:"conditions"`
		} `json:"status"`
	}
	patch.Status.Conditions = []condition{c}
	body, err := json.Marshal(patch)
	if err != nil {
		return err
	}
	// Read for every request: a projected service-account token expires,
	// and the kubelet rotates the file.
	token, err := os.ReadFile(g.api.TokenFile)
	if err != nil {
		return fmt.Errorf("read the service account's token: %w", err)
	}
	ns, pod := g.cfg.PodNamespace, g.cfg.PodName
	u := g.api.URL + "/api/v1/namespaces/" + url.PathEscape(ns) + "/pods/" + url.PathEscape(pod) +
		"/status?fieldManager=" + url.QueryEscape(g.fieldManager)
	req, err := http.NewRequestWithContext(ctx, http.MethodPatch, u, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/strategic-merge-patch+json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	resp, err := g.api.Client.Do(req)
	if err != nil {
		return err // names the URL, never the headers
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		_, _ = io.Copy(io.Discard, resp.Body) // the pod, unread: the connection is reused
		return nil
	case resp.StatusCode == http.StatusForbidden:
		return fmt.Errorf("%w in %s: bind it a Role granting patch on pods/status (k8s/components/readiness-gate)", ErrForbidden, ns)
	case resp.StatusCode == http.StatusNotFound:
		return fmt.Errorf("pod %s not found in namespace %s: check POD_NAME and POD_NAMESPACE", pod, ns)
	}
	head, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
	return fmt.Errorf("the API server answered %s: %s", resp.Status, bytes.TrimSpace(head))
}

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
