package verify

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
)

// stage is one FROM of a Dockerfile and the instructions under it.
type stage struct {
	image, name string
	nodes       []*parser.Node
}

// args returns the arguments of an instruction.
func args(n *parser.Node) []string {
	var out []string
	for a := n.Next; a != nil; a = a.Next {
		out = append(out, a.Value)
	}
	return out
}

// parseDockerfile parses content with BuildKit's own parser, as docker
// build does, and splits it into stages.
func parseDockerfile(content []byte) ([]stage, error) {
	res, err := parser.Parse(bytes.NewReader(content))
	if err != nil {
		return nil, err
	}
	var stages []stage
	for _, n := range res.AST.Children {
		if strings.EqualFold(n.Value, "from") {
			a := args(n)
			s := stage{image: a[0]}
			if len(a) == 3 && strings.EqualFold(a[1], "as") {
				s.name = a[2]
			}
			stages = append(stages, s)
			continue
		}
		if len(stages) == 0 {
			continue // ARG before the first FROM
		}
		stages[len(stages)-1].nodes = append(stages[len(stages)-1].nodes, n)
	}
	if len(stages) == 0 {
		return nil, fmt.Errorf("no FROM")
	}
	return stages, nil
}

func (s stage) all(instruction string) []*parser.Node {
	var out []*parser.Node
	for _, n := range s.nodes {
		if strings.EqualFold(n.Value, instruction) {
			out = append(out, n)
		}
	}
	return out
}

// image is a parsed Dockerfile and the defaults it must agree with.
type image struct {
	stages []stage
	ports  []string // of --http-addr and --admin-addr
}

func (im image) final() stage { return im.stages[len(im.stages)-1] }

var dockerfileChecks = []check[image]{
	{"stages", checkStages},
	{"static-build", checkStaticBuild},
	{"user", checkUser},
	{"entrypoint", checkEntrypoint},
	{"expose", checkExpose},
}

// minimalBases are the images the final stage may start from: no shell,
// no package manager, nothing but what a static binary needs.
var minimalBases = []string{"gcr.io/distroless/static", "cgr.dev/chainguard/static", "scratch"}

// checkStages: a Go 1.26 builder stage, and a final stage on a minimal base.
func checkStages(im image) []string {
	var p []string
	if len(im.stages) < 2 {
		p = append(p, fmt.Sprintf("%d stage(s): want a builder and a runtime stage", len(im.stages)))
	}
	builder := false
	for _, s := range im.stages[:len(im.stages)-1] {
		if strings.HasPrefix(s.image, "golang:1.26") {
			builder = true
		}
	}
	if !builder {
		p = append(p, "no builder stage FROM golang:1.26")
	}
	base := im.final().image
	if !slices.ContainsFunc(minimalBases, func(b string) bool {
		return base == b || strings.HasPrefix(base, b+"-") || strings.HasPrefix(base, b+":")
	}) {
		p = append(p, "final stage FROM "+base+", want one of "+strings.Join(minimalBases, ", "))
	}
	return p
}

// checkStaticBuild: the binary is built from ./cmd/txpipe with cgo off (a
// static binary runs on distroless/static) and -trimpath.
func checkStaticBuild(im image) []string {
	for _, s := range im.stages[:len(im.stages)-1] {
		cgoOff := false
		for _, n := range append(s.all("env"), s.all("arg")...) {
			a := args(n)
			for i := 0; i+1 < len(a); i += 2 {
				if a[i] == "CGO_ENABLED" && a[i+1] == "0" {
					cgoOff = true
				}
			}
		}
		for _, n := range s.all("run") {
			cmd := strings.Join(args(n), " ")
			if !strings.Contains(cmd, "go build") || !strings.Contains(cmd, "./cmd/txpipe") {
				continue
			}
			var p []string
			if !cgoOff && !strings.Contains(cmd, "CGO_ENABLED=0") {
				p = append(p, "go build runs without CGO_ENABLED=0")
			}
			if !strings.Contains(cmd, "-trimpath") {
				p = append(p, "go build runs without -trimpath")
			}
			return p
		}
	}
	return []string{"no stage runs go build ./cmd/txpipe"}
}

// checkUser: the final stage runs as a numeric non-root user, which
// Kubernetes' runAsNonRoot can verify without /etc/passwd.
func checkUser(im image) []string {
	users := im.final().all("user")
	if len(users) == 0 {
		return []string{"final stage sets no USER (it would run as the base image's user)"}
	}
	a := args(users[len(users)-1])
	if len(a) == 0 {
		return []string{"USER without a user"}
	}
	user, _, _ := strings.Cut(a[0], ":")
	uid, err := strconv.Atoi(user)
	switch {
	case err != nil:
		return []string{"USER " + a[0] + ": want a numeric uid"}
	case uid == 0:
		return []string{"USER " + a[0] + " is root"}
	}
	return nil
}

// checkEntrypoint: the final stage holds the one binary, copied from the
// builder, and runs it as its exec-form entrypoint; it runs nothing else.
func checkEntrypoint(im image) []string {
	f := im.final()
	var p []string
	if runs := f.all("run"); len(runs) > 0 {
		p = append(p, "final stage has RUN: a distroless image has no shell")
	}
	copies := f.all("copy")
	if len(copies) != 1 {
		p = append(p, fmt.Sprintf("final stage has %d COPY, want 1 (the binary)", len(copies)))
	} else {
		a := args(copies[0])
		if len(a) != 2 || a[1] != "/txpipe" || !slices.ContainsFunc(copies[0].Flags, func(f string) bool { return strings.HasPrefix(f, "--from=") }) {
			p = append(p, fmt.Sprintf("final stage COPY %v %v, want COPY --from=<builder> <binary> /txpipe", copies[0].Flags, a))
		}
	}
	if len(f.all("add")) > 0 {
		p = append(p, "final stage has ADD")
	}
	eps := f.all("entrypoint")
	if len(eps) == 0 {
		return append(p, "no ENTRYPOINT")
	}
	ep := eps[len(eps)-1]
	if !ep.Attributes["json"] || !slices.Equal(args(ep), []string{"/txpipe"}) {
		p = append(p, fmt.Sprintf("ENTRYPOINT %v, want [\"/txpipe\"] (exec form, so SIGTERM reaches txpipe)", args(ep)))
	}
	return p
}

// checkExpose: the image exposes the API and admin ports of the defaults.
func checkExpose(im image) []string {
	var exposed []string
	for _, n := range im.final().all("expose") {
		for _, a := range args(n) {
			exposed = append(exposed, strings.TrimSuffix(a, "/tcp"))
		}
	}
	var p []string
	for _, port := range im.ports {
		if !slices.Contains(exposed, port) {
			p = append(p, "EXPOSE lacks "+port)
		}
	}
	return p
}

func dockerfile(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(deployDir, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func newImage(t *testing.T, content []byte) image {
	t.Helper()
	stages, err := parseDockerfile(content)
	if err != nil {
		t.Fatalf("parse Dockerfile: %v", err)
	}
	return image{stages: stages, ports: []string{defaultPort(t, "http-addr"), defaultPort(t, "admin-addr")}}
}

func TestDockerfile(t *testing.T) {
	im := newImage(t, dockerfile(t))
	for _, c := range dockerfileChecks {
		for _, p := range c.fn(im) {
			t.Errorf("%s: %s", c.name, p)
		}
	}
}

// TestDockerfileChecksFail proves that each check can fail: every case
// edits the Dockerfile in one way and expects its check to say so.
func TestDockerfileChecksFail(t *testing.T) {
	checksCatch(t, "Dockerfile", string(dockerfile(t)), []edit{
		{"stages", "one stage", "FROM gcr.io/distroless/static-debian12:nonroot\nCOPY --from=build /out/txpipe /txpipe\n", ""},
		{"stages", "Debian base", "FROM gcr.io/distroless/static-debian12:nonroot", "FROM debian:bookworm-slim"},
		{"stages", "older Go", "FROM golang:1.26 AS build", "FROM golang:1.25 AS build"},
		{"static-build", "cgo on", "CGO_ENABLED=0 ", ""},
		{"static-build", "no -trimpath", "-trimpath ", ""},
		{"user", "root", "USER 65532:65532", "USER root"},
		{"user", "uid 0", "USER 65532:65532", "USER 0:0"},
		{"user", "no USER", "USER 65532:65532\n", ""},
		{"entrypoint", "shell form", `ENTRYPOINT ["/txpipe"]`, "ENTRYPOINT /txpipe"},
		{"entrypoint", "another binary", `ENTRYPOINT ["/txpipe"]`, `ENTRYPOINT ["/bin/sh", "-c", "/txpipe"]`},
		{"entrypoint", "more files", "COPY --from=build /out/txpipe /txpipe\n", "COPY --from=build /out/txpipe /txpipe\nCOPY --from=build /src /src\n"},
		{"expose", "no admin port", "EXPOSE 8080 9090", "EXPOSE 8080"},
	}, newImage, dockerfileChecks)
}

// buildInputs returns the files of the txpipe module that building
// ./cmd/txpipe reads, relative to the repository root: go.mod, go.sum and
// the Go and embedded files of every package of the module it imports.
func buildInputs(t *testing.T) []string {
	t.Helper()
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "list", "-deps", "-f",
		`{{if .Module}}{{if .Module.Main}}{{$d := .Dir}}{{range .GoFiles}}{{$d}}/{{.}}{{"\n"}}{{end}}{{range .EmbedFiles}}{{$d}}/{{.}}{{"\n"}}{{end}}{{end}}{{end}}`,
		"./cmd/txpipe")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps ./cmd/txpipe: %v", err)
	}
	files := []string{"go.mod", "go.sum"}
	for _, line := range strings.Fields(string(out)) {
		rel, err := filepath.Rel(root, line)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, filepath.ToSlash(rel))
	}
	if len(files) < 10 {
		t.Fatalf("go list found only %v", files)
	}
	return files
}

// excluded returns the files that the .dockerignore patterns leave out of
// the build context.
func excluded(patterns []string, files []string) ([]string, error) {
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, f := range files {
		if m, err := pm.MatchesOrParentMatches(f); err != nil {
			return nil, err
		} else if m {
			out = append(out, f)
		}
	}
	return out, nil
}

// TestDockerignoreKeepsTheBuildInputs: the root .dockerignore, which keeps
// the build context small, leaves in every file the build needs.
func TestDockerignoreKeepsTheBuildInputs(t *testing.T) {
	f, err := os.Open(filepath.Join(repoRoot, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	patterns, err := ignorefile.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	inputs := buildInputs(t)
	if out, err := excluded(patterns, inputs); err != nil {
		t.Fatal(err)
	} else if len(out) > 0 {
		t.Errorf(".dockerignore leaves out files the build needs: %v", out)
	}
	// The check itself: a pattern that drops a package is caught.
	if out, _ := excluded(append(patterns, "internal"), inputs); len(out) == 0 {
		t.Errorf("excluded() missed files under an ignored internal/")
	}
	// And the context stays small: the caches and binaries are left out.
	if out, _ := excluded(patterns, []string{".git/HEAD", ".cache/kafka/libs/x.jar", "bin/txpipe", "loadgen"}); len(out) != 4 {
		t.Errorf(".dockerignore keeps some of .git, .cache, bin, loadgen: only %v left out", out)
	}
}
