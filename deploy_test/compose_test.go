package deploytest

import (
	"cmp"
	"io/fs"
	"maps"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
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
	if got, want := slices.Sorted(maps.Keys(p.DisabledServices)), []string{"grafana", "postgres-replica", "prometheus"}; !slices.Equal(got, want) {
		t.Errorf("services behind profiles %v, want only %v: `docker compose up` must start the whole stack", got, want)
	}
}

// Each profile adds its own services and nothing else.
func TestCompose_ProfilesAddTheirServices(t *testing.T) {
	base := slices.Collect(maps.Keys(loadCompose(t, nil).Services))
	tests := []struct {
		profile string
		adds    []string
	}{
		{"replica", []string{"postgres-replica"}},
		{"observability", []string{"grafana", "prometheus"}},
	}
	for _, tt := range tests {
		t.Run(tt.profile, func(t *testing.T) {
			got := slices.Sorted(maps.Keys(loadCompose(t, nil, tt.profile).Services))
			want := append(slices.Clone(base), tt.adds...)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("services %v, want %v", got, want)
			}
		})
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
	official := map[string]string{
		"postgres":   "postgres:17-alpine",
		"redis":      "redis:7-alpine",
		"prometheus": "prom/prometheus:v3.13.2",
		"grafana":    "grafana/grafana:13.2.0",
	}
	tests := []struct {
		name string
		env  map[string]string
		want map[string]string // service: image
	}{
		{"unset: the official images", nil, official},
		{
			"empty: the official images",
			map[string]string{"POSTGRES_IMAGE": "", "REDIS_IMAGE": "", "PROMETHEUS_IMAGE": "", "GRAFANA_IMAGE": ""},
			official,
		},
		{
			"set: a mirror or a stand-in",
			map[string]string{
				"POSTGRES_IMAGE": "mirror.example/postgres:17.5", "REDIS_IMAGE": "mirror.example/redis:7.4",
				"PROMETHEUS_IMAGE": "payservice-standin/prometheus:2", "GRAFANA_IMAGE": "mirror.example/grafana:13.2.0",
			},
			map[string]string{
				"postgres": "mirror.example/postgres:17.5", "redis": "mirror.example/redis:7.4",
				"prometheus": "payservice-standin/prometheus:2", "grafana": "mirror.example/grafana:13.2.0",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := loadCompose(t, tt.env, "observability")
			for _, name := range slices.Sorted(maps.Keys(tt.want)) {
				if got := service(t, p, name).Image; got != tt.want[name] {
					t.Errorf("%s image %q, want %q", name, got, tt.want[name])
				}
			}
		})
	}
}

// .ci/run exports the image .ci/offline/images/standins.sh picks: its
// default, pulled, or a stand-in for it where no registry answers. That
// overrides compose's default, so the two must agree, or CI would go on
// running the old image after a bump.
func TestCompose_OfflineStandinsReplaceComposesDefaultImages(t *testing.T) {
	const script = "../.ci/offline/images/standins.sh"
	raw, err := os.ReadFile(script)
	if err != nil {
		t.Fatal(err)
	}
	// NAME_OFFICIAL=${VARIABLE:-image}
	defaults := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^(\w+)_OFFICIAL=\$\{\w+:-([^}]+)\}$`).FindAllStringSubmatch(string(raw), -1) {
		defaults[m[1]] = m[2]
	}
	p := loadCompose(t, nil, "observability")
	services := map[string]string{"PG": "postgres", "REDIS": "redis", "PROMETHEUS": "prometheus"}
	for _, name := range slices.Sorted(maps.Keys(services)) {
		service := services[name]
		got, ok := defaults[name]
		if !ok {
			t.Errorf("%s has no %s_OFFICIAL=${...:-image} line for compose's %s", script, name, service)
			continue
		}
		if want := p.Services[service].Image; got != want {
			t.Errorf("%s: %s_OFFICIAL defaults to %q, compose's %s to %q", script, name, got, service, want)
		}
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
	env := serviceEnv(service(t, loadCompose(t, nil), "app"))
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

// serviceEnv returns a service's environment as the container sees it.
func serviceEnv(s types.ServiceConfig) map[string]string {
	env := map[string]string{}
	for k, v := range s.Environment {
		env[k] = "" // a name without a value, passed from the shell, is still a name
		if v != nil {
			env[k] = *v
		}
	}
	return env
}

// hostPath returns the file of the checkout that a service's container sees
// at path p, through the service's bind mounts; false if none mounts it.
func hostPath(s types.ServiceConfig, p string) (string, bool) {
	var best types.ServiceVolumeConfig
	for _, v := range s.Volumes {
		if v.Type != types.VolumeTypeBind || len(v.Target) <= len(best.Target) {
			continue
		}
		if p == v.Target || strings.HasPrefix(p, strings.TrimSuffix(v.Target, "/")+"/") {
			best = v
		}
	}
	if best.Target == "" {
		return "", false
	}
	return filepath.Join(best.Source, filepath.FromSlash(strings.TrimPrefix(p, best.Target))), true
}

// repoPath returns the absolute path of a file of the repository.
func repoPath(t *testing.T, rel string) string {
	t.Helper()
	return filepath.Join(filepath.Dir(composePath(t)), filepath.FromSlash(rel))
}

// readYAML decodes a YAML file of the repository into v.
func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// flag returns the value of --name=value in a command line, or def.
func flag(cmd []string, name, def string) string {
	for _, a := range cmd {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v
		}
	}
	return def
}

// Nothing but the public API is reachable from beyond this machine (the
// admin port serves pprof; Grafana and Prometheus have no authentication),
// and no two services claim one host port.
func TestCompose_PublishesOnlyTheAPIBeyondLoopback(t *testing.T) {
	p := loadCompose(t, nil, "replica", "observability")
	claimed := map[string]string{} // host port: service
	for _, name := range slices.Sorted(maps.Keys(p.Services)) {
		for _, port := range p.Services[name].Ports {
			public := name == "app" && port.Target == 8080
			if port.HostIP != "127.0.0.1" && !public {
				t.Errorf("%s publishes container port %d on %q, want 127.0.0.1", name, port.Target, port.HostIP)
			}
			if other, ok := claimed[port.Published]; ok {
				t.Errorf("%s and %s both publish host port %s", other, name, port.Published)
			}
			claimed[port.Published] = name
		}
	}
}

// What compose mounts from the checkout exists there, and containers
// cannot change it.
func TestCompose_BindMountsAreReadOnlyFilesOfTheRepository(t *testing.T) {
	p := loadCompose(t, nil, "replica", "observability")
	root := filepath.Dir(composePath(t))
	for _, name := range slices.Sorted(maps.Keys(p.Services)) {
		for _, v := range p.Services[name].Volumes {
			if v.Type != types.VolumeTypeBind {
				continue
			}
			if rel, err := filepath.Rel(root, v.Source); err != nil || !filepath.IsLocal(rel) {
				t.Errorf("%s mounts %s, outside the repository", name, v.Source)
			}
			if _, err := os.Stat(v.Source); err != nil {
				t.Errorf("%s mounts %s at %s: %v", name, v.Source, v.Target, err)
			}
			if !v.ReadOnly {
				t.Errorf("%s mounts %s read-write at %s, want :ro", name, v.Source, v.Target)
			}
		}
	}
}

// prometheusConfig is the part of prometheus.yml the tests read.
type prometheusConfig struct {
	RuleFiles     []string `json:"rule_files"`
	ScrapeConfigs []struct {
		JobName       string `json:"job_name"`
		StaticConfigs []struct {
			Targets []string `json:"targets"`
		} `json:"static_configs"`
	} `json:"scrape_configs"`
}

// Prometheus reads the repository's configuration, which scrapes the admin
// port of every service running the server and loads the generated rules.
func TestCompose_PrometheusScrapesEveryServerAndLoadsTheRules(t *testing.T) {
	p := loadCompose(t, nil, "replica", "observability")
	prom := service(t, p, "prometheus")
	configPath := flag(prom.Command, "config.file", "/etc/prometheus/prometheus.yml")
	file, ok := hostPath(prom, configPath)
	if !ok {
		t.Fatalf("prometheus reads %s, which no bind mount provides", configPath)
	}
	if want := repoPath(t, "observability/prometheus/prometheus.yml"); file != want {
		t.Fatalf("prometheus reads %s from %s, want %s", configPath, file, want)
	}
	var cfg prometheusConfig
	readYAML(t, file, &cfg)

	t.Run("targets", func(t *testing.T) {
		scraped := map[string]bool{}
		for _, sc := range cfg.ScrapeConfigs {
			for _, st := range sc.StaticConfigs {
				for _, target := range st.Targets {
					scraped[target] = true
					host, _, err := net.SplitHostPort(target)
					if _, ok := p.Services[host]; err != nil || !ok {
						t.Errorf("job %s scrapes %q, no compose service's host:port", sc.JobName, target)
					}
				}
			}
		}
		servers := 0
		for _, name := range slices.Sorted(maps.Keys(p.Services)) {
			s := p.Services[name]
			if s.Build == nil || s.Build.Target != "server" {
				continue
			}
			servers++
			cfg, _, err := loadConfig(serviceEnv(s))
			if err != nil {
				t.Fatalf("%s: the app would refuse its compose environment: %v", name, err)
			}
			host, port, err := net.SplitHostPort(cfg.AdminAddr)
			if err != nil {
				t.Fatalf("%s: ADMIN_ADDR %q: %v", name, cfg.AdminAddr, err)
			}
			if host != "" && host != "0.0.0.0" && host != "::" {
				t.Errorf("%s: ADMIN_ADDR %q listens on %s only: Prometheus, in its own container, cannot reach it", name, cfg.AdminAddr, host)
			}
			if target := net.JoinHostPort(name, port); !scraped[target] {
				t.Errorf("prometheus.yml does not scrape %s, the admin port of %s (scrapes %v)", target, name, slices.Sorted(maps.Keys(scraped)))
			}
		}
		if servers == 0 {
			t.Error("no compose service builds the Dockerfile's server target")
		}
	})

	t.Run("rules", func(t *testing.T) {
		want := repoPath(t, "observability/prometheus/rules.yml")
		loaded := false
		for _, rf := range cfg.RuleFiles {
			if !path.IsAbs(rf) {
				rf = path.Join(path.Dir(configPath), rf) // as Prometheus resolves it
			}
			file, ok := hostPath(prom, rf)
			if !ok {
				t.Errorf("rule_files names %s, which no bind mount provides", rf)
				continue
			}
			matches, err := filepath.Glob(file)
			if err != nil || len(matches) == 0 {
				t.Errorf("rule_files names %s, mounted from %s, where no file is", rf, file)
			}
			loaded = loaded || slices.Contains(matches, want)
		}
		if !loaded {
			t.Errorf("rule_files %v does not load %s", cfg.RuleFiles, want)
		}
	})
}

// grafanaDatasources and grafanaDashboardProviders are the parts of
// Grafana's provisioning files the tests read.
type (
	grafanaDatasources struct {
		Datasources []struct {
			UID       string `json:"uid"`
			Type      string `json:"type"`
			URL       string `json:"url"`
			IsDefault bool   `json:"isDefault"`
		} `json:"datasources"`
	}
	grafanaDashboardProviders struct {
		Providers []struct {
			Type    string `json:"type"`
			Options struct {
				Path string `json:"path"`
			} `json:"options"`
		} `json:"providers"`
	}
)

// Grafana opens, without a login and for viewing only, on the generated
// dashboard, whose queries go to the compose stack's Prometheus.
func TestCompose_GrafanaShowsTheDashboardToAnonymousViewers(t *testing.T) {
	p := loadCompose(t, nil, "observability")
	grafana := service(t, p, "grafana")
	env := serviceEnv(grafana)
	for k, want := range map[string]string{
		"GF_AUTH_ANONYMOUS_ENABLED":  "true",
		"GF_AUTH_ANONYMOUS_ORG_ROLE": "Viewer",
	} {
		if env[k] != want {
			t.Errorf("%s=%q, want %q", k, env[k], want)
		}
	}
	dashboard := repoPath(t, "observability/grafana/dashboards/service.json")
	if home, ok := hostPath(grafana, env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]); !ok || home != dashboard {
		t.Errorf("the home dashboard %q is mounted from %q, want %s", env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"], home, dashboard)
	}

	// Grafana reads /etc/grafana/provisioning/<kind>/*.yaml: each file of
	// the repository's provisioning directory must be there.
	provisioning := repoPath(t, "observability/grafana/provisioning")
	var datasources, dashboards []string // their host paths
	err := filepath.WalkDir(provisioning, func(file string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(provisioning, file)
		if err != nil {
			return err
		}
		inContainer := path.Join("/etc/grafana/provisioning", filepath.ToSlash(rel))
		if got, ok := hostPath(grafana, inContainer); !ok || got != file {
			t.Errorf("%s is not mounted at %s", file, inContainer)
		}
		switch path.Dir(filepath.ToSlash(rel)) {
		case "datasources":
			datasources = append(datasources, file)
		case "dashboards":
			dashboards = append(dashboards, file)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	t.Run("datasource", func(t *testing.T) {
		prom := service(t, p, "prometheus")
		_, listen, err := net.SplitHostPort(flag(prom.Command, "web.listen-address", "0.0.0.0:9090"))
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, file := range datasources {
			var ds grafanaDatasources
			readYAML(t, file, &ds)
			for _, d := range ds.Datasources {
				if d.Type != "prometheus" {
					continue
				}
				found = true
				if u, err := url.Parse(d.URL); err != nil || u.Hostname() != "prometheus" || u.Port() != listen {
					t.Errorf("%s: data source %q has url %q, want the prometheus service on its port %s", file, d.UID, d.URL, listen)
				}
				// The dashboard's datasource variable starts on the default,
				// and CI queries this uid.
				if d.UID != "prometheus" || !d.IsDefault {
					t.Errorf("%s: data source uid %q, default %v; want uid prometheus, the default", file, d.UID, d.IsDefault)
				}
			}
		}
		if !found {
			t.Error("no prometheus data source is provisioned")
		}
	})

	t.Run("dashboard", func(t *testing.T) {
		found := false
		for _, file := range dashboards {
			var dp grafanaDashboardProviders
			readYAML(t, file, &dp)
			for _, pr := range dp.Providers {
				dir, ok := hostPath(grafana, pr.Options.Path)
				if pr.Type != "file" || !ok {
					t.Errorf("%s: provider of type %q reads %q, which no bind mount provides", file, pr.Type, pr.Options.Path)
					continue
				}
				found = found || filepath.Join(dir, filepath.Base(dashboard)) == dashboard
			}
		}
		if !found {
			t.Errorf("no dashboard provider reads %s", dashboard)
		}
	})
}
