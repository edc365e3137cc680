package verify

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"sigs.k8s.io/yaml"
)

// txpipeSubcommands are what a txpipe container may run.
var txpipeSubcommands = []string{"migrate", "topics", "ingest", "worker", "relay", "all", "verify", "dlq", "apikey"}

// oneShot are the subcommands that exit when done.
var oneShot = []string{"migrate", "topics"}

// stack is a loaded compose project with what the checks need besides.
type stack struct {
	*types.Project
	root  string        // the repository root, absolute
	drain time.Duration // --shutdown-timeout's default
	admin string        // --admin-addr's default port
}

// loadCompose loads content as deploy/compose.yaml, as `docker compose -f
// deploy/compose.yaml` would: project directory deploy/, relative paths
// resolved against it, no environment variables.
func loadCompose(ctx context.Context, content []byte) (*types.Project, error) {
	dir, err := filepath.Abs(deployDir)
	if err != nil {
		return nil, err
	}
	return loader.LoadWithContext(ctx, types.ConfigDetails{
		WorkingDir:  dir,
		ConfigFiles: []types.ConfigFile{{Filename: filepath.Join(dir, "compose.yaml"), Content: content}},
		Environment: types.Mapping{},
	}, func(o *loader.Options) {
		o.ResolvePaths = true
	})
}

func (s *stack) subcommand(svc types.ServiceConfig) string {
	if len(svc.Command) == 0 || !slices.Contains(txpipeSubcommands, svc.Command[0]) {
		return ""
	}
	return svc.Command[0]
}

// role returns the services running a txpipe subcommand.
func (s *stack) role(sub string) []types.ServiceConfig {
	var out []types.ServiceConfig
	for _, name := range sortedNames(s.Services) {
		if svc := s.Services[name]; s.subcommand(svc) == sub {
			out = append(out, svc)
		}
	}
	return out
}

func sortedNames(svcs types.Services) []string {
	var names []string
	for n := range svcs {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

func replicas(svc types.ServiceConfig) int {
	switch {
	case svc.Deploy != nil && svc.Deploy.Replicas != nil:
		return *svc.Deploy.Replicas
	case svc.Scale != nil:
		return *svc.Scale
	}
	return 1
}

var composeChecks = []check[*stack]{
	{"services", checkComposeServices},
	{"image", checkComposeImage},
	{"health", checkComposeHealth},
	{"order", checkComposeOrder},
	{"secrets", checkComposeSecrets},
	{"prometheus", checkComposePrometheus},
	{"grafana", checkComposeGrafana},
	{"paths", checkComposePaths},
	{"grace", checkComposeGrace},
}

// checkComposeServices: Kafka (apache/kafka), PostgreSQL, Prometheus,
// Grafana, migrate, topics, ingest, relay, and two workers in all.
func checkComposeServices(s *stack) []string {
	var p []string
	for name, image := range map[string]string{"kafka": "apache/kafka:", "postgres": "postgres:", "prometheus": "prom/prometheus:", "grafana": "grafana/grafana:"} {
		svc, ok := s.Services[name]
		if !ok {
			p = append(p, "no service "+name)
		} else if !strings.HasPrefix(svc.Image, image) {
			p = append(p, fmt.Sprintf("service %s: image %s, want %s…", name, svc.Image, image))
		}
	}
	for _, sub := range []string{"migrate", "topics", "ingest", "relay"} {
		if len(s.role(sub)) == 0 {
			p = append(p, "no service runs txpipe "+sub)
		}
	}
	workers := 0
	for _, svc := range s.role("worker") {
		workers += replicas(svc)
	}
	if workers != 2 {
		p = append(p, fmt.Sprintf("%d workers, want 2", workers))
	}
	return p
}

// checkComposeImage: every txpipe service runs the one image built from
// deploy/Dockerfile with the repository root as context.
func checkComposeImage(s *stack) []string {
	var p []string
	images := map[string]bool{}
	for _, name := range sortedNames(s.Services) {
		svc := s.Services[name]
		if s.subcommand(svc) == "" {
			continue
		}
		images[svc.Image] = true
		switch {
		case svc.Build == nil:
			p = append(p, "service "+name+": not built")
		case filepath.Clean(svc.Build.Context) != s.root:
			p = append(p, fmt.Sprintf("service %s: build context %s, want the repository root", name, svc.Build.Context))
		case filepath.ToSlash(svc.Build.Dockerfile) != "deploy/Dockerfile" && filepath.Clean(svc.Build.Dockerfile) != filepath.Join(s.root, "deploy", "Dockerfile"):
			p = append(p, fmt.Sprintf("service %s: Dockerfile %s, want deploy/Dockerfile", name, svc.Build.Dockerfile))
		}
	}
	if len(images) != 1 {
		p = append(p, fmt.Sprintf("txpipe services name %d images, want one", len(images)))
	}
	return p
}

func hasHealthcheck(svc types.ServiceConfig) bool {
	h := svc.HealthCheck
	return h != nil && !h.Disable && len(h.Test) > 0 && h.Test[0] != "NONE"
}

// checkComposeHealth: every long-running service has a health check, or
// (txpipe's, whose image has no shell to run one) starts only once what it
// needs is healthy or done; a condition names a service able to meet it.
func checkComposeHealth(s *stack) []string {
	var p []string
	for _, name := range sortedNames(s.Services) {
		svc := s.Services[name]
		for dep, d := range svc.DependsOn {
			target, ok := s.Services[dep]
			if !ok {
				continue // compose-go refuses the file already
			}
			switch d.Condition {
			case types.ServiceConditionHealthy:
				if !hasHealthcheck(target) {
					p = append(p, fmt.Sprintf("service %s waits for %s to be healthy, which has no health check", name, dep))
				}
			case types.ServiceConditionCompletedSuccessfully:
				if !slices.Contains(oneShot, s.subcommand(target)) || (target.Restart != "" && target.Restart != types.RestartPolicyNo) {
					p = append(p, fmt.Sprintf("service %s waits for %s to complete, which is not a one-shot", name, dep))
				}
			}
		}
		if slices.Contains(oneShot, s.subcommand(svc)) || hasHealthcheck(svc) {
			continue
		}
		if s.subcommand(svc) == "" {
			p = append(p, "service "+name+": no health check")
			continue
		}
		if len(svc.DependsOn) == 0 {
			p = append(p, "service "+name+": neither a health check nor depends_on conditions")
		}
		for dep, d := range svc.DependsOn {
			if d.Condition != types.ServiceConditionHealthy && d.Condition != types.ServiceConditionCompletedSuccessfully {
				p = append(p, fmt.Sprintf("service %s: depends on %s with condition %s, not healthy or completed", name, dep, d.Condition))
			}
		}
	}
	return p
}

// checkComposeOrder: the schema is migrated and the topics exist before
// ingest, the workers and the relay start.
func checkComposeOrder(s *stack) []string {
	var p []string
	want := func(svc types.ServiceConfig, dep, cond string) {
		var deps []string
		for _, d := range s.role(dep) {
			deps = append(deps, d.Name)
		}
		if _, ok := s.Services[dep]; ok {
			deps = append(deps, dep)
		}
		for _, d := range deps {
			if got, ok := svc.DependsOn[d]; ok && got.Condition == cond {
				return
			}
		}
		p = append(p, fmt.Sprintf("service %s does not wait for %s (%s)", svc.Name, dep, cond))
	}
	for _, role := range []string{"ingest", "worker", "relay"} {
		for _, svc := range s.role(role) {
			want(svc, "migrate", types.ServiceConditionCompletedSuccessfully)
			want(svc, "topics", types.ServiceConditionCompletedSuccessfully)
			want(svc, "postgres", types.ServiceConditionHealthy)
			want(svc, "kafka", types.ServiceConditionHealthy)
		}
	}
	for _, svc := range s.role("migrate") {
		want(svc, "postgres", types.ServiceConditionHealthy)
	}
	for _, svc := range s.role("topics") {
		want(svc, "kafka", types.ServiceConditionHealthy)
	}
	if g, ok := s.Services["grafana"]; ok {
		want(g, "prometheus", types.ServiceConditionHealthy)
	}
	return p
}

// secretFile returns the host file of the secret that a service sees at
// /run/secrets/<target>.
func (s *stack) secretFile(svc types.ServiceConfig, containerPath string) (string, error) {
	for _, ref := range svc.Secrets {
		target := ref.Target
		if target == "" {
			target = ref.Source
		}
		if !path.IsAbs(target) {
			target = "/run/secrets/" + target
		}
		if target != containerPath {
			continue
		}
		sec, ok := s.Secrets[ref.Source]
		if !ok || sec.File == "" {
			return "", fmt.Errorf("secret %s is not a file", ref.Source)
		}
		return sec.File, nil
	}
	return "", fmt.Errorf("no secret at %s", containerPath)
}

// keyID is the form of a metadata key's id (domain/sealing).
var keyID = regexp.MustCompile(`^[A-Za-z0-9._-]{1,32}$`)

// validMetadataKeys checks the format of TXPIPE_METADATA_KEYS:
// keyid:base64-of-32-bytes, comma-separated, as domain/sealing parses it.
func validMetadataKeys(v string) error {
	v = strings.TrimSuffix(v, "\n")
	if v == "" {
		return fmt.Errorf("empty")
	}
	for _, k := range strings.Split(v, ",") {
		id, b64, ok := strings.Cut(strings.TrimSpace(k), ":")
		if !ok || !keyID.MatchString(id) {
			return fmt.Errorf("a key is not keyid:base64")
		}
		key, err := base64.StdEncoding.DecodeString(b64)
		if err != nil || len(key) != 32 {
			return fmt.Errorf("key %s is not the base64 of 32 bytes", id)
		}
	}
	return nil
}

// checkComposeSecrets: every secret setting comes from a compose secret's
// file (TXPIPE_<SETTING>_FILE), never from a plain variable: the database
// URL for every role that uses the database, the metadata keys for ingest
// and the workers.
func checkComposeSecrets(s *stack) []string {
	var p []string
	need := map[string][]string{
		"TXPIPE_DATABASE_URL":  {"migrate", "ingest", "worker", "relay"},
		"TXPIPE_METADATA_KEYS": {"ingest", "worker"},
	}
	for _, name := range sortedNames(s.Services) {
		svc := s.Services[name]
		for _, setting := range secretSettings {
			if _, ok := svc.Environment[setting]; ok {
				p = append(p, fmt.Sprintf("service %s: %s is a secret: set %s_FILE to a compose secret", name, setting, setting))
			}
		}
	}
	for _, setting := range []string{"TXPIPE_DATABASE_URL", "TXPIPE_METADATA_KEYS"} {
		for _, role := range need[setting] {
			for _, svc := range s.role(role) {
				v := svc.Environment[setting+"_FILE"]
				if v == nil {
					p = append(p, fmt.Sprintf("service %s: %s_FILE is not set", svc.Name, setting))
					continue
				}
				file, err := s.secretFile(svc, *v)
				if err != nil {
					p = append(p, fmt.Sprintf("service %s: %s_FILE=%s: %v", svc.Name, setting, *v, err))
					continue
				}
				b, err := os.ReadFile(file)
				if err != nil {
					p = append(p, fmt.Sprintf("service %s: %s: %v", svc.Name, setting, err))
					continue
				}
				switch setting {
				case "TXPIPE_METADATA_KEYS":
					if err := validMetadataKeys(string(b)); err != nil {
						p = append(p, fmt.Sprintf("%s: %v", file, err))
					}
				case "TXPIPE_DATABASE_URL":
					if u, err := url.Parse(strings.TrimSpace(string(b))); err != nil || u.Scheme != "postgres" || s.Services[u.Hostname()].Name == "" {
						p = append(p, fmt.Sprintf("%s: not a postgres:// URL of a compose service", file))
					}
				}
			}
		}
	}
	return p
}

// bind returns the host path mounted at target in svc, if any.
func bind(svc types.ServiceConfig, target string) (string, bool) {
	for _, v := range svc.Volumes {
		if v.Type == types.VolumeTypeBind && path.Clean(v.Target) == path.Clean(target) {
			return v.Source, true
		}
	}
	return "", false
}

// promConfig is the part of a Prometheus configuration the checks read.
type promConfig struct {
	RuleFiles     []string `json:"rule_files"`
	ScrapeConfigs []struct {
		JobName       string `json:"job_name"`
		StaticConfigs []struct {
			Targets []string `json:"targets"`
		} `json:"static_configs"`
		DNSSDConfigs []struct {
			Names []string `json:"names"`
			Type  string   `json:"type"`
			Port  int      `json:"port"`
		} `json:"dns_sd_configs"`
	} `json:"scrape_configs"`
}

// checkComposePrometheus: Prometheus runs with deploy/prometheus/rules.yml
// and a configuration that loads it and scrapes every role's admin port as
// job txpipe-<role>.
func checkComposePrometheus(s *stack) []string {
	prom, ok := s.Services["prometheus"]
	if !ok {
		return []string{"no prometheus service"}
	}
	const confPath = "/etc/prometheus/prometheus.yml"
	confFile, ok := bind(prom, confPath)
	if !ok {
		return []string{"prometheus: nothing mounted at " + confPath}
	}
	b, err := os.ReadFile(confFile)
	if err != nil {
		return []string{"prometheus: " + err.Error()}
	}
	var conf promConfig
	if err := yaml.Unmarshal(b, &conf); err != nil {
		return []string{confFile + ": " + err.Error()}
	}
	var p []string
	rules := filepath.Join(s.root, "deploy", "prometheus", "rules.yml")
	loaded := false
	for _, rf := range conf.RuleFiles {
		if !path.IsAbs(rf) {
			rf = path.Join(path.Dir(confPath), rf)
		}
		if src, ok := bind(prom, rf); ok && filepath.Clean(src) == rules {
			loaded = true
		}
	}
	if !loaded {
		p = append(p, "prometheus: no rule_files entry is deploy/prometheus/rules.yml mounted")
	}
	for _, role := range []string{"ingest", "worker", "relay"} {
		var names []string
		for _, svc := range s.role(role) {
			names = append(names, svc.Name)
		}
		found := false
		for _, sc := range conf.ScrapeConfigs {
			if sc.JobName != "txpipe-"+role {
				continue
			}
			for _, d := range sc.DNSSDConfigs {
				if fmt.Sprint(d.Port) == s.admin && len(d.Names) > 0 && slices.Contains(names, d.Names[0]) {
					found = true
				}
			}
			for _, st := range sc.StaticConfigs {
				for _, target := range st.Targets {
					if host, port, _ := strings.Cut(target, ":"); port == s.admin && slices.Contains(names, host) {
						found = true
					}
				}
			}
		}
		if !found {
			p = append(p, fmt.Sprintf("prometheus: no job txpipe-%s scrapes the %s service on port %s", role, role, s.admin))
		}
	}
	return p
}

// checkComposeGrafana: Grafana is provisioned from deploy/grafana: the
// provisioning folder, the dashboards where its provider reads them, and a
// datasource pointing at the prometheus service.
func checkComposeGrafana(s *stack) []string {
	g, ok := s.Services["grafana"]
	if !ok {
		return []string{"no grafana service"}
	}
	var p []string
	prov := filepath.Join(s.root, "deploy", "grafana", "provisioning")
	if src, ok := bind(g, "/etc/grafana/provisioning"); !ok || filepath.Clean(src) != prov {
		p = append(p, "grafana: deploy/grafana/provisioning is not mounted at /etc/grafana/provisioning")
	}
	var providers struct {
		Providers []struct {
			Options struct {
				Path string `json:"path"`
			} `json:"options"`
		} `json:"providers"`
	}
	if b, err := os.ReadFile(filepath.Join(prov, "dashboards", "txpipe.yml")); err != nil {
		p = append(p, err.Error())
	} else if err := yaml.Unmarshal(b, &providers); err != nil || len(providers.Providers) == 0 {
		p = append(p, "deploy/grafana/provisioning/dashboards/txpipe.yml: no provider")
	} else {
		want := filepath.Join(s.root, "deploy", "grafana", "dashboards")
		if src, ok := bind(g, providers.Providers[0].Options.Path); !ok || filepath.Clean(src) != want {
			p = append(p, "grafana: deploy/grafana/dashboards is not mounted at "+providers.Providers[0].Options.Path)
		}
	}
	var ds struct {
		Datasources []struct {
			URL string `json:"url"`
		} `json:"datasources"`
	}
	if b, err := os.ReadFile(filepath.Join(prov, "datasources", "prometheus.yml")); err != nil {
		p = append(p, err.Error())
	} else if err := yaml.Unmarshal(b, &ds); err != nil || len(ds.Datasources) == 0 {
		p = append(p, "deploy/grafana/provisioning/datasources/prometheus.yml: no datasource")
	} else if u, err := url.Parse(ds.Datasources[0].URL); err != nil || s.Services[u.Hostname()].Name != "prometheus" {
		p = append(p, "grafana: the datasource "+ds.Datasources[0].URL+" is not the prometheus service")
	}
	return p
}

// checkComposePaths: every file the stack mounts or builds from exists
// inside the repository.
func checkComposePaths(s *stack) []string {
	var p []string
	exists := func(what, file string) {
		rel, err := filepath.Rel(s.root, file)
		if err != nil || strings.HasPrefix(rel, "..") {
			p = append(p, fmt.Sprintf("%s: %s is outside the repository", what, file))
			return
		}
		if _, err := os.Stat(file); err != nil {
			p = append(p, fmt.Sprintf("%s: %s does not exist", what, rel))
		}
	}
	for _, name := range sortedNames(s.Services) {
		svc := s.Services[name]
		for _, v := range svc.Volumes {
			if v.Type == types.VolumeTypeBind {
				exists("service "+name+" volume", v.Source)
			}
		}
		if svc.Build != nil {
			exists("service "+name+" build context", svc.Build.Context)
			df := svc.Build.Dockerfile
			if !filepath.IsAbs(df) {
				df = filepath.Join(svc.Build.Context, df)
			}
			exists("service "+name+" Dockerfile", df)
		}
	}
	for name, sec := range s.Secrets {
		if sec.File != "" {
			exists("secret "+name, sec.File)
		}
	}
	for name, c := range s.Configs {
		if c.File != "" {
			exists("config "+name, c.File)
		}
	}
	return p
}

// checkComposeGrace: docker waits longer than the drain timeout before it
// kills a stopping txpipe container.
func checkComposeGrace(s *stack) []string {
	var p []string
	for _, name := range sortedNames(s.Services) {
		svc := s.Services[name]
		sub := s.subcommand(svc)
		if sub == "" || slices.Contains(oneShot, sub) {
			continue
		}
		grace := 10 * time.Second // docker's default
		if svc.StopGracePeriod != nil {
			grace = time.Duration(*svc.StopGracePeriod)
		}
		if grace <= s.drain {
			p = append(p, fmt.Sprintf("service %s: stop_grace_period %s, want more than the drain timeout %s", name, grace, s.drain))
		}
	}
	return p
}

func composeFile(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(deployDir, "compose.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func newStack(t *testing.T, content []byte) *stack {
	t.Helper()
	p, err := loadCompose(t.Context(), content)
	if err != nil {
		t.Fatalf("load compose.yaml: %v", err)
	}
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	return &stack{Project: p, root: root, drain: drainTimeout(t), admin: defaultPort(t, "admin-addr")}
}

func TestComposeStack(t *testing.T) {
	s := newStack(t, composeFile(t))
	for _, c := range composeChecks {
		for _, p := range c.fn(s) {
			t.Errorf("%s: %s", c.name, p)
		}
	}
	var envs []string
	for _, svc := range s.Services {
		for k := range svc.Environment {
			envs = append(envs, k)
		}
	}
	if bad := unknownSettings(envs, flagNames(t)); len(bad) > 0 {
		t.Errorf("settings that no flag of cmd/txpipe reads: %v", bad)
	}
}

// TestComposeChecksFail proves that each check can fail: every case edits
// compose.yaml in one way and expects its check to say so.
func TestComposeChecksFail(t *testing.T) {
	checksCatch(t, "compose.yaml", string(composeFile(t)), []edit{
		{"services", "one worker", "replicas: 2", "replicas: 1"},
		{"services", "another Kafka image", "image: apache/kafka:", "image: bitnami/kafka:"},
		{"image", "another Dockerfile", "dockerfile: deploy/Dockerfile", "dockerfile: Dockerfile"},
		{"health", "no Kafka health check", `test: ["CMD-SHELL", "/opt/kafka/bin/kafka-broker-api-versions.sh --bootstrap-server kafka:9092 >/dev/null 2>&1"]`, "disable: true"},
		{"health", "relay only started after Kafka", `  relay:
    <<: *txpipe-service
`, `  relay:
    <<: *txpipe-service
    depends_on:
      kafka: {condition: service_started}
`},
		{"order", "ingest before migrate", "migrate: {condition: service_completed_successfully}", "migrate: {condition: service_started}"},
		{"secrets", "worker without metadata keys", `      TXPIPE_METADATA_KEYS_FILE: /run/secrets/metadata-keys
    secrets: [database-url, metadata-keys]
    deploy:`, `    secrets: [database-url]
    deploy:`},
		{"secrets", "key file of the wrong length", "file: ./compose/dev-metadata-keys", "file: ./compose/dev-postgres-password"},
		{"prometheus", "rules not mounted", "./prometheus/rules.yml:/etc/prometheus/rules.yml:ro", "./prometheus/rules.yml:/etc/prometheus/alerts.yml:ro"},
		{"grafana", "no dashboards", "./grafana/dashboards:/var/lib/grafana/dashboards:ro", "./grafana/dashboards:/dashboards:ro"},
		{"paths", "missing rules file", "./prometheus/rules.yml:", "./prometheus/missing.yml:"},
		{"grace", "docker's default grace period", "stop_grace_period: 30s", "stop_grace_period: 10s"},
	}, newStack, composeChecks)
}

// TestComposePrometheusConfig runs promtool on the compose stack's
// Prometheus configuration, with the rules beside it as compose mounts them.
func TestComposePrometheusConfig(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("promtool not found; .ci/run installs Debian's prometheus package")
		}
		t.Skip("promtool not found: apt-get install prometheus")
	}
	dir := t.TempDir()
	for src, dst := range map[string]string{
		filepath.Join(deployDir, "compose", "prometheus.yml"): "prometheus.yml",
		filepath.Join(deployDir, "prometheus", "rules.yml"):   "rules.yml",
	} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, dst), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(promtool, "check", "config", "prometheus.yml")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool check config: %v\n%s", err, out)
	}
}
