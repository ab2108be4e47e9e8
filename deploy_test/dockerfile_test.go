package deploytest

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// stage is one FROM … AS name of a Dockerfile and the files its COPY
// --from=build lines take from the build stage.
type stage struct {
	name  string
	files []string
}

// dockerfileStages reads the repository's Dockerfile's stages in order.
func dockerfileStages(t *testing.T) []stage {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var stages []stage
	for line := range strings.Lines(string(raw)) {
		f := strings.Fields(line)
		switch {
		case len(f) >= 2 && f[0] == "FROM":
			s := stage{}
			if len(f) == 4 && strings.EqualFold(f[2], "AS") {
				s.name = f[3]
			}
			stages = append(stages, s)
		case len(f) >= 4 && f[0] == "COPY" && f[1] == "--from=build" && len(stages) > 0:
			last := &stages[len(stages)-1]
			last.files = append(last.files, f[2:len(f)-1]...)
		}
	}
	if len(stages) < 2 {
		t.Fatalf("Dockerfile has %d stages, want a build stage and an image per binary", len(stages))
	}
	return stages
}

// The server's image is what reaches production: a fake provider that
// answers "charged" to anything must not ship in it.
func TestDockerfile_TheDefaultImageHoldsOnlyTheServer(t *testing.T) {
	stages := dockerfileStages(t)
	last := stages[len(stages)-1] // what a plain `docker build .` builds
	if last.name != "server" {
		t.Errorf("the last stage is %q, want server: `docker build .` builds the last", last.name)
	}
	if !slices.Equal(last.files, []string{"/server"}) {
		t.Errorf("the server image copies %v from the build, want only /server", last.files)
	}
	i := slices.IndexFunc(stages, func(s stage) bool { return s.name == "fakeprovider" })
	if i < 0 {
		t.Fatal("no stage named fakeprovider: compose and the dev overlays build it with --target fakeprovider")
	}
	if !slices.Equal(stages[i].files, []string{"/fakeprovider"}) {
		t.Errorf("the fakeprovider image copies %v from the build, want only /fakeprovider", stages[i].files)
	}
}

func TestCompose_BuildsEachServiceItsOwnImage(t *testing.T) {
	p := loadCompose(t, nil)
	for name, want := range map[string]struct{ target, image string }{
		"app":          {"server", "payservice:dev"},
		"fakeprovider": {"fakeprovider", "payservice-fakeprovider:dev"},
	} {
		s := service(t, p, name)
		if s.Build == nil || s.Build.Target != want.target {
			t.Errorf("%s: build target %v, want %q", name, s.Build, want.target)
		}
		if s.Image != want.image {
			t.Errorf("%s: image %q, want %q (make image and the k8s overlays use that name)", name, s.Image, want.image)
		}
	}
}

// The image builds from what the Dockerfile copies and .dockerignore lets
// through: every directory holding a package the binaries import must be
// in both, or `docker build` fails where `go build` passes.
func TestDockerfile_CopiesEveryPackageTheBinariesImport(t *testing.T) {
	const module = "github.com/resiliencekit/payservice"
	out, err := exec.Command("go", "list", "-C", "..", "-deps", "-f", "{{.ImportPath}}", "./cmd/server", "./cmd/fakeprovider").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	dirs := map[string]bool{}
	for _, p := range strings.Fields(string(out)) {
		if rest, ok := strings.CutPrefix(p, module+"/"); ok {
			dirs[strings.Split(rest, "/")[0]] = true
		}
	}
	if len(dirs) == 0 {
		t.Fatalf("go list named no package of %s: %s", module, out)
	}
	dockerfile, err := os.ReadFile(filepath.Join("..", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	ignore, err := os.ReadFile(filepath.Join("..", ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	for dir := range dirs {
		if !strings.Contains(string(dockerfile), "\nCOPY "+dir+"/ "+dir+"/\n") {
			t.Errorf("the binaries import packages under %s/, which the Dockerfile does not COPY", dir)
		}
		if !slices.Contains(strings.Fields(string(ignore)), "!"+dir+"/") {
			t.Errorf("the binaries import packages under %s/, which .dockerignore keeps out of the build context", dir)
		}
	}
}
