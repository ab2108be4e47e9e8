package deploytest

import (
	"cmp"
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
)

const composeFile = "../docker-compose.yml"

// loadCompose loads docker-compose.yml offline, interpolated and validated
// as Compose would, with exactly env as the environment: neither the
// developer's shell (a POSTGRES_IMAGE they exported, say) nor a .env file
// leaks into the result.
func loadCompose(t *testing.T, env map[string]string, profiles ...string) *types.Project {
	t.Helper()
	path := composePath(t)
	details := types.ConfigDetails{
		WorkingDir:  filepath.Dir(path),
		ConfigFiles: []types.ConfigFile{{Filename: path}},
		Environment: env,
	}
	p, err := loader.LoadWithContext(t.Context(), details, func(o *loader.Options) {
		o.SetProjectName("payservice", true)
		o.Profiles = profiles
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
		t.Fatalf("%s is missing: the repository must ship a compose file with services postgres, redis, fakeprovider and app: %v", composeFile, err)
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
	if got := slices.Sorted(maps.Keys(p.DisabledServices)); !slices.Equal(got, []string{"postgres-replica"}) {
		t.Errorf("services behind profiles %v, want only postgres-replica: `docker compose up` must start the whole stack", got)
	}
}

// --profile replica adds a streaming replica of postgres, which the app
// reads from: its DATABASE_REPLICA_URL names it.
func TestCompose_ReplicaProfileAddsAReplicaTheAppReadsFrom(t *testing.T) {
	p := loadCompose(t, nil, "replica")
	replica := service(t, p, "postgres-replica")
	if c := replica.DependsOn["postgres"].Condition; c != types.ServiceConditionHealthy {
		t.Errorf("the replica waits for postgres to be %q, want healthy: pg_basebackup needs it up", c)
	}
	if replica.Image != service(t, p, "postgres").Image {
		t.Errorf("replica image %q differs from the primary's %q: streaming replication needs one major version", replica.Image, service(t, p, "postgres").Image)
	}
	if hc := replica.HealthCheck; hc == nil || len(hc.Test) == 0 || !strings.Contains(strings.Join(hc.Test, " "), "pg_isready") {
		t.Errorf("replica healthcheck %v, want pg_isready", hc)
	}
	raw := service(t, p, "app").Environment["DATABASE_REPLICA_URL"]
	if raw == nil {
		t.Fatal("app has no DATABASE_REPLICA_URL")
	}
	u, err := url.Parse(*raw)
	if err != nil || u.Hostname() != "postgres-replica" {
		t.Errorf("app's DATABASE_REPLICA_URL %q (%v): want the host postgres-replica", *raw, err)
	}
	// The primary admits replication connections, whatever its volume's
	// own pg_hba.conf says.
	if cmd := strings.Join(service(t, p, "postgres").Command, " "); !strings.Contains(cmd, "hba_file=") {
		t.Errorf("postgres command %q sets no hba_file: an existing volume would refuse the replica", cmd)
	}
	hba, ok := p.Configs["pg_hba"]
	if !ok || !strings.Contains(hba.Content, "host    replication") {
		t.Error("the pg_hba config admits no replication connection")
	}
	mounted := false
	for _, c := range service(t, p, "postgres").Configs {
		mounted = mounted || c.Source == "pg_hba" && strings.Contains(strings.Join(service(t, p, "postgres").Command, " "), "hba_file="+c.Target)
	}
	if !mounted {
		t.Error("postgres does not mount the pg_hba config where its hba_file points")
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
		// The binaries' own subcommands: distroless has no shell or curl.
		// The image's HEALTHCHECK runs /server, which the fake's container
		// does not: it needs its own.
		{"fakeprovider", []string{"/fakeprovider healthcheck"}},
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

// The app starts once every dependency answers its healthcheck, not merely
// once its container runs: a started fake provider may not listen yet.
func TestCompose_AppStartsAfterItsDependencies(t *testing.T) {
	p := loadCompose(t, nil)
	deps := service(t, p, "app").DependsOn
	for _, want := range []string{"postgres", "redis", "fakeprovider"} {
		if _, ok := deps[want]; !ok {
			t.Errorf("app does not depend on %s", want)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(deps)) {
		t.Run(name, func(t *testing.T) {
			if c := deps[name].Condition; c != types.ServiceConditionHealthy {
				t.Errorf("app waits for %s to be %q, want %q", name, c, types.ServiceConditionHealthy)
			}
			if hc := service(t, p, name).HealthCheck; hc == nil || hc.Disable || len(hc.Test) == 0 {
				t.Errorf("%s has no healthcheck: it would never turn healthy, and app never start", name)
			}
		})
	}
}

// dockerfileBaseImages reads the Dockerfile's base-image build args: it
// returns their defaults, and fails unless every FROM takes its
// image from one of them and each is used.
func dockerfileBaseImages(t *testing.T, path string) map[string]string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	args := map[string]string{"GO_IMAGE": "", "RUNTIME_IMAGE": ""}
	used := map[string]bool{}
	for line := range strings.Lines(string(raw)) {
		switch f := strings.Fields(line); {
		case len(f) >= 2 && f[0] == "ARG":
			if name, def, ok := strings.Cut(f[1], "="); ok {
				if _, base := args[name]; base {
					args[name] = def
				}
			}
		case len(f) >= 2 && f[0] == "FROM":
			name := strings.Trim(f[1], "${}")
			if _, base := args[name]; !base {
				t.Errorf("%s: FROM %s is no base-image build arg (%v)", path, f[1], slices.Sorted(maps.Keys(args)))
			}
			used[name] = true
		}
	}
	for _, name := range slices.Sorted(maps.Keys(args)) {
		if args[name] == "" {
			t.Errorf("%s: build arg %s has no default: a plain `docker build` would fail", path, name)
		}
		if !used[name] {
			t.Errorf("%s: build arg %s is used by no FROM", path, name)
		}
	}
	return args
}

func TestCompose_BuildsWithTheDockerfilesBaseImageArgs(t *testing.T) {
	p := loadCompose(t, nil)
	for _, name := range []string{"app", "fakeprovider"} {
		t.Run(name, func(t *testing.T) {
			b := service(t, p, name).Build
			if b == nil {
				t.Fatal("not built here: it would need an image from a registry")
			}
			dockerfile := filepath.Join(b.Context, cmp.Or(b.Dockerfile, "Dockerfile"))
			// Unset, compose passes the Dockerfile's own defaults, so that
			// `docker build` and `docker compose build` build the same.
			for arg, def := range dockerfileBaseImages(t, dockerfile) {
				if v := b.Args[arg]; v == nil || *v != def {
					t.Errorf("build arg %s is not the Dockerfile's default %q", arg, def)
				}
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
	env := map[string]string{}
	for k, v := range service(t, loadCompose(t, nil), "app").Environment {
		env[k] = "" // a name without a value, passed from the shell, is still a name
		if v != nil {
			env[k] = *v
		}
	}
	if env["API_KEYS"] == "" {
		t.Error("API_KEYS is not set: no client could call the API")
	}
	if u, err := url.Parse(env["PROVIDER_URL"]); err != nil || u.Hostname() != "fakeprovider" {
		t.Errorf("PROVIDER_URL %q does not point at the fakeprovider service", env["PROVIDER_URL"])
	}
	_, read, err := loadConfig(env)
	if err != nil {
		t.Errorf("the app would refuse its compose environment:\n%v", err)
	}
	for _, k := range slices.Sorted(maps.Keys(env)) {
		if !read[k] {
			t.Errorf("app environment %s is no variable the app reads (server -h lists them): misspelt?", k)
		}
	}
}
