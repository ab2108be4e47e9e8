package deploytest

import (
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"sigs.k8s.io/yaml"

	"github.com/resiliencekit/payservice/internal/config"
)

const composeFile = "../docker-compose.yml"

// loadCompose loads docker-compose.yml offline, interpolated and validated
// as Compose would, with exactly env as the environment: neither the
// developer's shell (a POSTGRES_IMAGE they exported, say) nor a .env file
// leaks into the result.
func loadCompose(t *testing.T, env map[string]string) *types.Project {
	t.Helper()
	path := composePath(t)
	details := types.ConfigDetails{
		WorkingDir:  filepath.Dir(path),
		ConfigFiles: []types.ConfigFile{{Filename: path}},
		Environment: env,
	}
	p, err := loader.LoadWithContext(t.Context(), details, func(o *loader.Options) {
		o.SetProjectName("payservice", true)
	})
	if err != nil {
		t.Fatalf("load %s: %v", composeFile, err)
	}
	return p
}

// composePath returns the compose file's absolute path, or fails the test
// saying the file is part of the repository's contract.
func composePath(t *testing.T) string {
	t.Helper()
	path, err := filepath.Abs(composeFile)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("%s is missing: the repository must ship a compose file with services postgres, redis, fakeprovider and app (DESIGN §1, §7): %v", composeFile, err)
	}
	return path
}

// service returns the named service, or fails the test.
func service(t *testing.T, p *types.Project, name string) types.ServiceConfig {
	t.Helper()
	s, ok := p.Services[name]
	if !ok {
		t.Fatalf("no service %q", name)
	}
	return s
}

func TestCompose_RunsExactlyTheLocalStack(t *testing.T) {
	p := loadCompose(t, nil)
	got := slices.Sorted(maps.Keys(p.Services))
	if want := []string{"app", "fakeprovider", "postgres", "redis"}; !slices.Equal(got, want) {
		t.Errorf("services %v, want %v", got, want)
	}
	if len(p.DisabledServices) > 0 {
		t.Errorf("services %v sit behind profiles: `docker compose up` must start the whole stack", slices.Sorted(maps.Keys(p.DisabledServices)))
	}
}

func TestCompose_HasNoVersionAttribute(t *testing.T) {
	raw, err := os.ReadFile(composePath(t))
	if err != nil {
		t.Fatal(err)
	}
	var top map[string]any
	if err := yaml.Unmarshal(raw, &top); err != nil {
		t.Fatal(err)
	}
	if _, ok := top["version"]; ok {
		t.Error("top-level `version:` is obsolete in the Compose Specification; Compose warns on every command")
	}
}

func TestCompose_ImagesAreOverridableFromTheEnvironment(t *testing.T) {
	tests := []struct {
		name            string
		env             map[string]string
		postgres, redis string
	}{
		{"unset: the official images", nil, "postgres:17-alpine", "redis:7-alpine"},
		{"empty: the official images", map[string]string{"POSTGRES_IMAGE": "", "REDIS_IMAGE": ""}, "postgres:17-alpine", "redis:7-alpine"},
		{
			"set: a mirror or a stand-in",
			map[string]string{"POSTGRES_IMAGE": "mirror.example/postgres:17.5", "REDIS_IMAGE": "mirror.example/redis:7.4"},
			"mirror.example/postgres:17.5", "mirror.example/redis:7.4",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := loadCompose(t, tt.env)
			if got := service(t, p, "postgres").Image; got != tt.postgres {
				t.Errorf("postgres image %q, want %q", got, tt.postgres)
			}
			if got := service(t, p, "redis").Image; got != tt.redis {
				t.Errorf("redis image %q, want %q", got, tt.redis)
			}
		})
	}
}

func TestCompose_HealthchecksProbeEachService(t *testing.T) {
	p := loadCompose(t, nil)
	tests := []struct {
		service string
		want    []string // substrings of the command, joined by spaces
	}{
		// Over TCP: during initdb the image's temporary server listens on
		// the Unix socket only, where a check would pass too early.
		{"postgres", []string{"pg_isready", "-h 127.0.0.1"}},
		{"redis", []string{"redis-cli", "ping"}},
		// The binary's own subcommand: distroless has no shell or curl.
		{"app", []string{"/server healthcheck"}},
	}
	for _, tt := range tests {
		t.Run(tt.service, func(t *testing.T) {
			hc := service(t, p, tt.service).HealthCheck
			if hc == nil || hc.Disable || len(hc.Test) == 0 {
				t.Fatal("no healthcheck")
			}
			cmd := strings.Join(hc.Test, " ")
			for _, w := range tt.want {
				if !strings.Contains(cmd, w) {
					t.Errorf("healthcheck %q does not run %q", cmd, w)
				}
			}
		})
	}
}

func TestCompose_AppStartsAfterItsDependencies(t *testing.T) {
	deps := service(t, loadCompose(t, nil), "app").DependsOn
	tests := []struct {
		service    string
		conditions []string
	}{
		{"postgres", []string{types.ServiceConditionHealthy}},
		{"redis", []string{types.ServiceConditionHealthy}},
		{"fakeprovider", []string{types.ServiceConditionStarted, types.ServiceConditionHealthy}},
	}
	for _, tt := range tests {
		t.Run(tt.service, func(t *testing.T) {
			d, ok := deps[tt.service]
			switch {
			case !ok:
				t.Errorf("app does not depend on %s", tt.service)
			case !slices.Contains(tt.conditions, d.Condition):
				t.Errorf("app waits for %s to be %q, want one of %v", tt.service, d.Condition, tt.conditions)
			}
		})
	}
}

func TestCompose_PostgresKeepsItsDataInANamedVolume(t *testing.T) {
	p := loadCompose(t, nil)
	for _, v := range service(t, p, "postgres").Volumes {
		if v.Type == types.VolumeTypeVolume && strings.HasPrefix(v.Target, "/var/lib/postgresql") {
			if _, ok := p.Volumes[v.Source]; !ok {
				t.Errorf("volume %q is not declared under top-level volumes:", v.Source)
			}
			return
		}
	}
	t.Error("postgres keeps /var/lib/postgresql in no named volume: its data would vanish with the container")
}

func TestCompose_AppIsConfiguredForTheLocalStack(t *testing.T) {
	env := service(t, loadCompose(t, nil), "app").Environment
	getenv := func(k string) string {
		if v := env[k]; v != nil {
			return *v
		}
		return ""
	}
	if getenv("API_KEYS") == "" {
		t.Error("API_KEYS is not set: no client could call the API")
	}
	if u, err := url.Parse(getenv("PROVIDER_URL")); err != nil || u.Hostname() != "fakeprovider" {
		t.Errorf("PROVIDER_URL %q does not point at the fakeprovider service", getenv("PROVIDER_URL"))
	}
	if _, err := config.Load(getenv); err != nil {
		t.Errorf("the app would refuse its compose environment:\n%v", err)
	}
}
