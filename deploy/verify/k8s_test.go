package verify

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// podMonitor is the part of the Prometheus Operator's PodMonitor
// (monitoring.coreos.com/v1) that the manifests use; decoding strictly into
// it refuses any other field, so a misspelt one fails the test.
type podMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		JobLabel            string               `json:"jobLabel,omitempty"`
		Selector            metav1.LabelSelector `json:"selector"`
		NamespaceSelector   *struct{}            `json:"namespaceSelector,omitempty"`
		PodMetricsEndpoints []struct {
			Port          string `json:"port"`
			Path          string `json:"path,omitempty"`
			Scheme        string `json:"scheme,omitempty"`
			Interval      string `json:"interval,omitempty"`
			ScrapeTimeout string `json:"scrapeTimeout,omitempty"`
			Relabelings   []struct {
				SourceLabels []string `json:"sourceLabels,omitempty"`
				Separator    string   `json:"separator,omitempty"`
				TargetLabel  string   `json:"targetLabel,omitempty"`
				Regex        string   `json:"regex,omitempty"`
				Replacement  string   `json:"replacement,omitempty"`
				Action       string   `json:"action,omitempty"`
			} `json:"relabelings,omitempty"`
		} `json:"podMetricsEndpoints"`
	} `json:"spec"`
}

// kinds are the only objects the manifests may hold, by apiVersion and
// kind: anything else (another kind, or a kind at an unexpected version)
// fails the test.
var kinds = map[string]func() any{
	"v1/ServiceAccount":                      func() any { return new(corev1.ServiceAccount) },
	"v1/ConfigMap":                           func() any { return new(corev1.ConfigMap) },
	"v1/Secret":                              func() any { return new(corev1.Secret) },
	"v1/Service":                             func() any { return new(corev1.Service) },
	"apps/v1/Deployment":                     func() any { return new(appsv1.Deployment) },
	"batch/v1/Job":                           func() any { return new(batchv1.Job) },
	"policy/v1/PodDisruptionBudget":          func() any { return new(policyv1.PodDisruptionBudget) },
	"autoscaling/v2/HorizontalPodAutoscaler": func() any { return new(autoscalingv2.HorizontalPodAutoscaler) },
	"monitoring.coreos.com/v1/PodMonitor":    func() any { return new(podMonitor) },
}

// manifests are the rendered objects, decoded into their types.
type manifests struct {
	deployments  []*appsv1.Deployment
	jobs         []*batchv1.Job
	services     []*corev1.Service
	configMaps   []*corev1.ConfigMap
	secrets      []*corev1.Secret
	accounts     []*corev1.ServiceAccount
	pdbs         []*policyv1.PodDisruptionBudget
	hpas         []*autoscalingv2.HorizontalPodAutoscaler
	podMonitors  []*podMonitor
	drainDefault time.Duration // --shutdown-timeout's default in config.go
}

// render runs kustomize on dir, as `kubectl apply -k dir` would, and returns
// each object as YAML.
func render(t *testing.T, dir string) [][]byte {
	t.Helper()
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	var docs [][]byte
	for _, r := range m.Resources() {
		b, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		docs = append(docs, b)
	}
	return docs
}

// decode decodes every document strictly into its Kubernetes type.
func decode(docs [][]byte) (*manifests, error) {
	m := &manifests{}
	for _, doc := range docs {
		var head metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &head); err != nil {
			return nil, err
		}
		mk, ok := kinds[head.APIVersion+"/"+head.Kind]
		if !ok {
			return nil, fmt.Errorf("unexpected object %s %s: add its type to kinds, or remove it", head.APIVersion, head.Kind)
		}
		obj := mk()
		// As the API server decodes: field names are case-sensitive, and an
		// unknown or repeated field is an error.
		j, err := yaml.YAMLToJSONStrict(doc)
		if err != nil {
			return nil, fmt.Errorf("%s: %w\n%s", head.Kind, err, doc)
		}
		strict, err := kjson.UnmarshalStrict(j, obj, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
		if err == nil && len(strict) > 0 {
			err = errors.Join(strict...)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w\n%s", head.Kind, err, doc)
		}
		switch o := obj.(type) {
		case *appsv1.Deployment:
			m.deployments = append(m.deployments, o)
		case *batchv1.Job:
			m.jobs = append(m.jobs, o)
		case *corev1.Service:
			m.services = append(m.services, o)
		case *corev1.ConfigMap:
			m.configMaps = append(m.configMaps, o)
		case *corev1.Secret:
			m.secrets = append(m.secrets, o)
		case *corev1.ServiceAccount:
			m.accounts = append(m.accounts, o)
		case *policyv1.PodDisruptionBudget:
			m.pdbs = append(m.pdbs, o)
		case *autoscalingv2.HorizontalPodAutoscaler:
			m.hpas = append(m.hpas, o)
		case *podMonitor:
			m.podMonitors = append(m.podMonitors, o)
		}
	}
	return m, nil
}

// podTemplate is a pod template with the name of what owns it.
type podTemplate struct {
	owner string
	spec  *corev1.PodSpec
	meta  *metav1.ObjectMeta
}

func (m *manifests) templates() []podTemplate {
	var ts []podTemplate
	for _, d := range m.deployments {
		ts = append(ts, podTemplate{"Deployment " + d.Name, &d.Spec.Template.Spec, &d.Spec.Template.ObjectMeta})
	}
	for _, j := range m.jobs {
		ts = append(ts, podTemplate{"Job " + j.Name, &j.Spec.Template.Spec, &j.Spec.Template.ObjectMeta})
	}
	return ts
}

// allContainers returns the init containers and containers of a pod.
func allContainers(p *corev1.PodSpec) []*corev1.Container {
	var cs []*corev1.Container
	for i := range p.InitContainers {
		cs = append(cs, &p.InitContainers[i])
	}
	for i := range p.Containers {
		cs = append(cs, &p.Containers[i])
	}
	return cs
}

// subcommand is what a container runs: the first argument of /txpipe.
func subcommand(c *corev1.Container) string {
	args := append(slices.Clone(c.Command), c.Args...)
	if len(args) > 0 && strings.HasSuffix(args[0], "/txpipe") {
		args = args[1:]
	}
	if len(args) == 0 {
		return ""
	}
	return args[0]
}

func (m *manifests) deployment(role string) *appsv1.Deployment {
	for _, d := range m.deployments {
		if len(d.Spec.Template.Spec.Containers) > 0 && subcommand(&d.Spec.Template.Spec.Containers[0]) == role {
			return d
		}
	}
	return nil
}

// setting returns the value of a TXPIPE_ variable in the ConfigMaps.
func (m *manifests) setting(name string) (string, bool) {
	for _, cm := range m.configMaps {
		if v, ok := cm.Data[name]; ok {
			return v, true
		}
	}
	return "", false
}

// drain is how long a process may take to drain: TXPIPE_SHUTDOWN_TIMEOUT
// from the ConfigMap, else the flag's default.
func (m *manifests) drain() (time.Duration, error) {
	if v, ok := m.setting("TXPIPE_SHUTDOWN_TIMEOUT"); ok {
		return time.ParseDuration(v)
	}
	return m.drainDefault, nil
}

var k8sChecks = []check[*manifests]{
	{"roles", checkRoles},
	{"probes", checkProbes},
	{"security", checkSecurity},
	{"resources", checkResources},
	{"grace", checkGrace},
	{"settings", checkSettings},
	{"hpa", checkHPA},
	{"pdb", checkPDBs},
	{"job", checkJob},
	{"worker-replicas", checkWorkerReplicas},
	{"images", checkImages},
	{"services", checkServices},
	{"upgrade-step", checkUpgradeStep},
}

// checkRoles: one Deployment per long-running role.
func checkRoles(m *manifests) []string {
	var p []string
	for _, role := range []string{"ingest", "worker", "relay"} {
		if m.deployment(role) == nil {
			p = append(p, "no Deployment runs txpipe "+role)
		}
	}
	return p
}

// adminPort returns the container port that serves the admin address.
func adminPort(c *corev1.Container) int32 {
	for _, port := range c.Ports {
		if port.Name == "admin" {
			return port.ContainerPort
		}
	}
	return 0
}

// probePort resolves a probe's port against the container's ports.
func probePort(c *corev1.Container, h *corev1.HTTPGetAction) int32 {
	if h.Port.StrVal == "" {
		return h.Port.IntVal
	}
	for _, port := range c.Ports {
		if port.Name == h.Port.StrVal {
			return port.ContainerPort
		}
	}
	return 0
}

// checkProbes: every container of a Deployment is probed for liveness on
// /healthz and readiness on /readyz, on the admin port (--admin-addr).
func checkProbes(m *manifests) []string {
	want, _ := strconv.Atoi(strings.TrimPrefix(settingOr(m, "TXPIPE_ADMIN_ADDR", ":9090"), ":"))
	var p []string
	for _, d := range m.deployments {
		for i := range d.Spec.Template.Spec.Containers {
			c := &d.Spec.Template.Spec.Containers[i]
			where := fmt.Sprintf("Deployment %s container %s", d.Name, c.Name)
			if a := adminPort(c); int(a) != want {
				p = append(p, fmt.Sprintf("%s: admin port %d, want %d (--admin-addr)", where, a, want))
			}
			for _, pr := range []struct {
				kind  string
				probe *corev1.Probe
				path  string
			}{{"liveness", c.LivenessProbe, "/healthz"}, {"readiness", c.ReadinessProbe, "/readyz"}} {
				switch {
				case pr.probe == nil || pr.probe.HTTPGet == nil:
					p = append(p, fmt.Sprintf("%s: no HTTP %s probe", where, pr.kind))
				case pr.probe.HTTPGet.Path != pr.path:
					p = append(p, fmt.Sprintf("%s: %s probe on %s, want %s", where, pr.kind, pr.probe.HTTPGet.Path, pr.path))
				case int(probePort(c, pr.probe.HTTPGet)) != want:
					p = append(p, fmt.Sprintf("%s: %s probe on port %s, want the admin port %d", where, pr.kind, pr.probe.HTTPGet.Port.String(), want))
				}
			}
		}
	}
	return p
}

func settingOr(m *manifests, name, def string) string {
	if v, ok := m.setting(name); ok {
		return v
	}
	return def
}

// checkSecurity: every container of every pod runs as a non-root user
// with a read-only root file system, no privilege escalation, no
// capabilities and the runtime's default seccomp profile.
func checkSecurity(m *manifests) []string {
	var p []string
	for _, t := range m.templates() {
		ps := t.spec.SecurityContext
		if ps == nil {
			ps = &corev1.PodSecurityContext{}
		}
		if t.spec.AutomountServiceAccountToken == nil || *t.spec.AutomountServiceAccountToken {
			p = append(p, t.owner+": automountServiceAccountToken is not false")
		}
		for _, c := range allContainers(t.spec) {
			where := t.owner + " container " + c.Name
			cs := c.SecurityContext
			if cs == nil {
				p = append(p, where+": no securityContext")
				continue
			}
			nonRoot := ps.RunAsNonRoot
			if cs.RunAsNonRoot != nil {
				nonRoot = cs.RunAsNonRoot
			}
			if nonRoot == nil || !*nonRoot {
				p = append(p, where+": runAsNonRoot is not true")
			}
			user := ps.RunAsUser
			if cs.RunAsUser != nil {
				user = cs.RunAsUser
			}
			if user != nil && *user == 0 {
				p = append(p, where+": runAsUser is 0")
			}
			if cs.ReadOnlyRootFilesystem == nil || !*cs.ReadOnlyRootFilesystem {
				p = append(p, where+": readOnlyRootFilesystem is not true")
			}
			if cs.AllowPrivilegeEscalation == nil || *cs.AllowPrivilegeEscalation {
				p = append(p, where+": allowPrivilegeEscalation is not false")
			}
			if cs.Privileged != nil && *cs.Privileged {
				p = append(p, where+": privileged")
			}
			if cs.Capabilities == nil || !slices.Contains(cs.Capabilities.Drop, "ALL") || len(cs.Capabilities.Add) > 0 {
				p = append(p, where+": capabilities do not drop ALL (and add none)")
			}
			seccomp := ps.SeccompProfile
			if cs.SeccompProfile != nil {
				seccomp = cs.SeccompProfile
			}
			if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
				p = append(p, where+": seccompProfile is not RuntimeDefault")
			}
		}
	}
	return p
}

// checkResources: every container requests and is limited in CPU and
// memory, and requests no more than its limit.
func checkResources(m *manifests) []string {
	var p []string
	for _, t := range m.templates() {
		for _, c := range allContainers(t.spec) {
			where := t.owner + " container " + c.Name
			for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
				req, okReq := c.Resources.Requests[r]
				lim, okLim := c.Resources.Limits[r]
				switch {
				case !okReq || req.IsZero():
					p = append(p, fmt.Sprintf("%s: no %s request", where, r))
				case !okLim || lim.IsZero():
					p = append(p, fmt.Sprintf("%s: no %s limit", where, r))
				case req.Cmp(lim) > 0:
					p = append(p, fmt.Sprintf("%s: %s request %s above its limit %s", where, r, req.String(), lim.String()))
				}
			}
		}
	}
	return p
}

// checkGrace: a Deployment's pods get longer to stop than the drain takes
// (plus any preStop pause), so that SIGKILL never cuts a drain short.
func checkGrace(m *manifests) []string {
	drain, err := m.drain()
	if err != nil {
		return []string{"TXPIPE_SHUTDOWN_TIMEOUT: " + err.Error()}
	}
	var p []string
	for _, d := range m.deployments {
		need := drain
		for _, c := range d.Spec.Template.Spec.Containers {
			if c.Lifecycle != nil && c.Lifecycle.PreStop != nil && c.Lifecycle.PreStop.Sleep != nil {
				need += time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second
			}
		}
		g := d.Spec.Template.Spec.TerminationGracePeriodSeconds
		if g == nil || time.Duration(*g)*time.Second <= need {
			got := "unset (30s)"
			if g != nil {
				got = fmt.Sprintf("%ds", *g)
			}
			p = append(p, fmt.Sprintf("Deployment %s: terminationGracePeriodSeconds %s, want more than %s (drain timeout and preStop)", d.Name, got, need))
		}
	}
	return p
}

// secretSettings are the settings that must come from the Secret.
var secretSettings = []string{"TXPIPE_DATABASE_URL", "TXPIPE_METADATA_KEYS", "TXPIPE_KAFKA_SASL_PASSWORD"}

// checkSettings: every container takes its settings from the ConfigMap
// (envFrom) and its secrets from the Secret, mounted as files that the
// ConfigMap's TXPIPE_*_FILE variables name; no secret is a plain setting.
func checkSettings(m *manifests) []string {
	var p []string
	cms := map[string]*corev1.ConfigMap{}
	for _, cm := range m.configMaps {
		cms[cm.Name] = cm
	}
	secrets := map[string]*corev1.Secret{}
	for _, s := range m.secrets {
		secrets[s.Name] = s
	}
	for _, cm := range m.configMaps {
		for _, name := range secretSettings {
			if _, ok := cm.Data[name]; ok {
				p = append(p, fmt.Sprintf("ConfigMap %s: %s is a secret: set %s_FILE to a file of the Secret instead", cm.Name, name, name))
			}
		}
	}
	for _, t := range m.templates() {
		for _, c := range allContainers(t.spec) {
			where := t.owner + " container " + c.Name
			var files map[string]string // TXPIPE_…_FILE → path, from the container's ConfigMaps
			for _, ef := range c.EnvFrom {
				if ef.ConfigMapRef == nil {
					continue
				}
				cm, ok := cms[ef.ConfigMapRef.Name]
				if !ok {
					p = append(p, fmt.Sprintf("%s: envFrom ConfigMap %s, which the manifests do not define", where, ef.ConfigMapRef.Name))
					continue
				}
				if files == nil {
					files = map[string]string{}
				}
				for k, v := range cm.Data {
					if strings.HasSuffix(k, "_FILE") {
						files[k] = v
					}
				}
			}
			if files == nil {
				p = append(p, where+": no settings from a ConfigMap (envFrom configMapRef)")
				continue
			}
			// Where each Secret is mounted in this container.
			mounts := map[string]*corev1.Secret{}
			for _, vm := range c.VolumeMounts {
				for _, v := range t.spec.Volumes {
					if v.Name == vm.Name && v.Secret != nil {
						if s, ok := secrets[v.Secret.SecretName]; ok {
							mounts[filepath.Clean(vm.MountPath)] = s
						} else {
							p = append(p, fmt.Sprintf("%s: mounts Secret %s, which the manifests do not define", where, v.Secret.SecretName))
						}
					}
				}
			}
			if len(mounts) == 0 {
				p = append(p, where+": mounts no Secret")
			}
			for _, name := range secretSettings {
				path, ok := files[name+"_FILE"]
				if !ok {
					p = append(p, fmt.Sprintf("%s: %s_FILE is not set", where, name))
					continue
				}
				s, ok := mounts[filepath.Dir(path)]
				if !ok {
					p = append(p, fmt.Sprintf("%s: %s_FILE=%s is not in a mounted Secret", where, name, path))
					continue
				}
				key := filepath.Base(path)
				_, inData := s.Data[key]
				_, inString := s.StringData[key]
				if !inData && !inString {
					p = append(p, fmt.Sprintf("%s: %s_FILE=%s: Secret %s has no key %s", where, name, path, s.Name, key))
				}
			}
		}
	}
	return p
}

// checkHPA: an autoscaling/v2 HorizontalPodAutoscaler scales the ingest
// Deployment, which leaves its replica count to it.
func checkHPA(m *manifests) []string {
	ingest := m.deployment("ingest")
	if ingest == nil {
		return []string{"no ingest Deployment"}
	}
	var p []string
	found := false
	for _, h := range m.hpas {
		ref := h.Spec.ScaleTargetRef
		if ref.Kind != "Deployment" || ref.APIVersion != "apps/v1" || ref.Name != ingest.Name {
			continue
		}
		found = true
		if h.Spec.MinReplicas == nil || *h.Spec.MinReplicas < 2 {
			p = append(p, fmt.Sprintf("HorizontalPodAutoscaler %s: minReplicas below 2 leaves the API one pod from an outage", h.Name))
		}
		if h.Spec.MaxReplicas < 2 || (h.Spec.MinReplicas != nil && h.Spec.MaxReplicas < *h.Spec.MinReplicas) {
			p = append(p, fmt.Sprintf("HorizontalPodAutoscaler %s: maxReplicas %d", h.Name, h.Spec.MaxReplicas))
		}
		if len(h.Spec.Metrics) == 0 {
			p = append(p, fmt.Sprintf("HorizontalPodAutoscaler %s: no metrics", h.Name))
		}
	}
	if !found {
		p = append(p, "no HorizontalPodAutoscaler targets Deployment "+ingest.Name)
	}
	if ingest.Spec.Replicas != nil {
		p = append(p, "Deployment "+ingest.Name+" sets replicas, which every apply would reset under the autoscaler")
	}
	return p
}

// checkPDBs: every Deployment's pods are covered by a PodDisruptionBudget
// that lets at least one of them be evicted at a time.
func checkPDBs(m *manifests) []string {
	var p []string
	for _, d := range m.deployments {
		covered := false
		for _, pdb := range m.pdbs {
			sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
			if err != nil || sel.Empty() || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
				continue
			}
			covered = true
			if pdb.Spec.MinAvailable == nil && pdb.Spec.MaxUnavailable == nil {
				p = append(p, "PodDisruptionBudget "+pdb.Name+": neither minAvailable nor maxUnavailable")
			}
			if mu := pdb.Spec.MaxUnavailable; mu != nil && mu.StrVal == "" && mu.IntVal < 1 {
				p = append(p, "PodDisruptionBudget "+pdb.Name+": maxUnavailable below 1 blocks every node drain")
			}
		}
		if !covered {
			p = append(p, "no PodDisruptionBudget selects the pods of Deployment "+d.Name)
		}
	}
	return p
}

// checkJob: a Job runs migrate and then topics (migrate in an init
// container, or before topics in the same pod's init containers).
func checkJob(m *manifests) []string {
	for _, j := range m.jobs {
		spec := &j.Spec.Template.Spec
		var order []string
		for _, c := range allContainers(spec) {
			order = append(order, subcommand(c))
		}
		mi, ti := slices.Index(order, "migrate"), slices.Index(order, "topics")
		if mi < 0 {
			continue
		}
		var p []string
		switch {
		case ti < 0:
			p = append(p, "Job "+j.Name+": runs migrate but not topics")
		case mi >= len(spec.InitContainers):
			p = append(p, "Job "+j.Name+": migrate is not an init container, so it runs beside topics rather than before")
		case ti < mi:
			p = append(p, "Job "+j.Name+": topics runs before migrate")
		}
		if spec.RestartPolicy != corev1.RestartPolicyOnFailure && spec.RestartPolicy != corev1.RestartPolicyNever {
			p = append(p, "Job "+j.Name+": restartPolicy must be OnFailure or Never")
		}
		return p
	}
	return []string{"no Job runs txpipe migrate"}
}

// checkWorkerReplicas: no more workers than the commands topic has
// partitions; a worker beyond them owns none and sits idle.
func checkWorkerReplicas(m *manifests) []string {
	w := m.deployment("worker")
	if w == nil {
		return []string{"no worker Deployment"}
	}
	parts, err := strconv.Atoi(settingOr(m, "TXPIPE_PARTITIONS", "12"))
	if err != nil {
		return []string{"TXPIPE_PARTITIONS: " + err.Error()}
	}
	replicas := int32(1)
	if w.Spec.Replicas != nil {
		replicas = *w.Spec.Replicas
	}
	if int(replicas) > parts {
		return []string{fmt.Sprintf("Deployment %s: %d replicas, more than the %d partitions", w.Name, replicas, parts)}
	}
	return nil
}

// checkImages: every container runs one and the same image, with a tag, so
// that one image setting moves every role together.
func checkImages(m *manifests) []string {
	seen := map[string]bool{}
	var p []string
	for _, t := range m.templates() {
		for _, c := range allContainers(t.spec) {
			seen[c.Image] = true
			if name := c.Image[strings.LastIndex(c.Image, "/")+1:]; !strings.Contains(name, ":") && !strings.Contains(c.Image, "@") {
				p = append(p, fmt.Sprintf("%s container %s: image %s has no tag", t.owner, c.Name, c.Image))
			}
		}
	}
	if len(seen) != 1 {
		p = append(p, fmt.Sprintf("containers run %d different images, want one", len(seen)))
	}
	return p
}

// checkServices: a Service sends the API port to the ingest pods, and one
// exposes the admin port of every role.
func checkServices(m *manifests) []string {
	var p []string
	ingest := m.deployment("ingest")
	if ingest == nil {
		return []string{"no ingest Deployment"}
	}
	api, admin := false, map[string]bool{}
	for _, s := range m.services {
		sel := labels.SelectorFromSet(s.Spec.Selector)
		if len(s.Spec.Selector) == 0 {
			continue
		}
		for _, port := range s.Spec.Ports {
			if sel.Matches(labels.Set(ingest.Spec.Template.Labels)) && port.TargetPort.String() == "http" {
				api = true
			}
			if port.TargetPort.String() == "admin" {
				for _, role := range []string{"ingest", "worker", "relay"} {
					if d := m.deployment(role); d != nil && sel.Matches(labels.Set(d.Spec.Template.Labels)) {
						admin[role] = true
					}
				}
			}
		}
	}
	if !api {
		p = append(p, "no Service sends port http to the ingest pods")
	}
	for _, role := range []string{"ingest", "worker", "relay"} {
		if !admin[role] {
			p = append(p, "no Service exposes the admin port of the "+role+" pods")
		}
	}
	return p
}

// upgradeStep selects what docs/deployment.md applies first at an upgrade:
// the migration Job and everything its pod needs.
const upgradeStep = "app.kubernetes.io/component in (config,migrate)"

// checkUpgradeStep: the upgradeStep selector selects every Job and the
// ConfigMaps, Secrets and ServiceAccount that its pod refers to, and no
// Deployment.
func checkUpgradeStep(m *manifests) []string {
	sel, err := labels.Parse(upgradeStep)
	if err != nil {
		return []string{err.Error()}
	}
	var p []string
	selected := func(kind string, meta metav1.ObjectMeta) {
		if !sel.Matches(labels.Set(meta.Labels)) {
			p = append(p, fmt.Sprintf("%s %s is not selected by %q", kind, meta.Name, upgradeStep))
		}
	}
	byName := func(name string, metas []metav1.ObjectMeta, kind string) {
		for _, meta := range metas {
			if meta.Name == name {
				selected(kind, meta)
				return
			}
		}
		p = append(p, fmt.Sprintf("the Job refers to %s %s, which the manifests do not define", kind, name))
	}
	var cms, secrets, accounts []metav1.ObjectMeta
	for _, o := range m.configMaps {
		cms = append(cms, o.ObjectMeta)
	}
	for _, o := range m.secrets {
		secrets = append(secrets, o.ObjectMeta)
	}
	for _, o := range m.accounts {
		accounts = append(accounts, o.ObjectMeta)
	}
	for _, j := range m.jobs {
		selected("Job", j.ObjectMeta)
		spec := &j.Spec.Template.Spec
		if spec.ServiceAccountName != "" {
			byName(spec.ServiceAccountName, accounts, "ServiceAccount")
		}
		for _, c := range allContainers(spec) {
			for _, ef := range c.EnvFrom {
				if ef.ConfigMapRef != nil {
					byName(ef.ConfigMapRef.Name, cms, "ConfigMap")
				}
				if ef.SecretRef != nil {
					byName(ef.SecretRef.Name, secrets, "Secret")
				}
			}
		}
		for _, v := range spec.Volumes {
			if v.Secret != nil {
				byName(v.Secret.SecretName, secrets, "Secret")
			}
		}
	}
	for _, d := range m.deployments {
		if sel.Matches(labels.Set(d.Labels)) {
			p = append(p, fmt.Sprintf("Deployment %s is selected by %q, which must apply only the migration", d.Name, upgradeStep))
		}
	}
	return p
}

func runChecks(m *manifests) map[string][]string {
	out := map[string][]string{}
	for _, c := range k8sChecks {
		if p := c.fn(m); len(p) > 0 {
			out[c.name] = p
		}
	}
	return out
}

// exampleOverlay writes the overlay of docs/deployment.md to a temporary
// directory: the base, the prometheus-operator component, an image, a
// namespace and the secrets from files. It returns the directory.
func exampleOverlay(t *testing.T) string {
	t.Helper()
	base, err := filepath.Abs(filepath.Join(deployDir, "k8s"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// kustomize takes no absolute path to a base or a component.
	rel, err := filepath.Rel(dir, base)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"kustomization.yaml": `apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: txpipe
resources:
  - ` + rel + `
components:
  - ` + filepath.Join(rel, "prometheus-operator") + `
images:
  - name: txpipe
    newName: registry.example.com/txpipe
    newTag: v1.2.3
configMapGenerator:
  - name: txpipe-config
    behavior: merge
    literals:
      - TXPIPE_KAFKA_BROKERS=kafka-0.kafka:9092,kafka-1.kafka:9092,kafka-2.kafka:9092
      - TXPIPE_KAFKA_SASL_USER=txpipe
secretGenerator:
  - name: txpipe-secrets
    behavior: replace
    files:
      - database-url=secrets/database-url
      - metadata-keys=secrets/metadata-keys
      - kafka-sasl-password=secrets/kafka-sasl-password
`,
		"secrets/database-url":        "postgres://txpipe:test@db:5432/txpipe?sslmode=verify-full\n",
		"secrets/metadata-keys":       "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
		"secrets/kafka-sasl-password": "test\n",
	}
	for name, content := range files {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestKubernetesManifests(t *testing.T) {
	known := flagNames(t)
	for _, tc := range []struct {
		name string
		dir  func(*testing.T) string
	}{
		{"base", func(*testing.T) string { return filepath.Join(deployDir, "k8s") }},
		{"example overlay", exampleOverlay},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := decode(render(t, tc.dir(t)))
			if err != nil {
				t.Fatal(err)
			}
			m.drainDefault = drainTimeout(t)
			for name, problems := range runChecks(m) {
				for _, p := range problems {
					t.Errorf("%s: %s", name, p)
				}
			}
			var envs []string
			for _, cm := range m.configMaps {
				for k := range cm.Data {
					envs = append(envs, k)
				}
			}
			for _, tpl := range m.templates() {
				for _, c := range allContainers(tpl.spec) {
					for _, e := range c.Env {
						envs = append(envs, e.Name)
					}
				}
			}
			if bad := unknownSettings(envs, known); len(bad) > 0 {
				t.Errorf("settings that no flag of cmd/txpipe reads: %v", bad)
			}
		})
	}
}

// TestPodMonitorJobLabels: with the prometheus-operator component, the
// PodMonitor scrapes the admin port of every role and names the job
// txpipe-<role>, which the alert rules and the dashboard select.
func TestPodMonitorJobLabels(t *testing.T) {
	m, err := decode(render(t, exampleOverlay(t)))
	if err != nil {
		t.Fatal(err)
	}
	if len(m.podMonitors) != 1 {
		t.Fatalf("%d PodMonitors, want 1", len(m.podMonitors))
	}
	pm := m.podMonitors[0]
	sel, err := metav1.LabelSelectorAsSelector(&pm.Spec.Selector)
	if err != nil {
		t.Fatal(err)
	}
	for _, role := range []string{"ingest", "worker", "relay"} {
		if d := m.deployment(role); d == nil || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
			t.Errorf("PodMonitor %s does not select the %s pods", pm.Name, role)
		}
	}
	if len(m.jobs) > 0 && sel.Matches(labels.Set(m.jobs[0].Spec.Template.Labels)) {
		t.Errorf("PodMonitor %s selects the migration Job's pod, which serves no metrics", pm.Name)
	}
	if len(pm.Spec.PodMetricsEndpoints) != 1 || pm.Spec.PodMetricsEndpoints[0].Port != "admin" {
		t.Fatalf("PodMonitor %s: endpoints %+v, want one on port admin", pm.Name, pm.Spec.PodMetricsEndpoints)
	}
	rl := pm.Spec.PodMetricsEndpoints[0].Relabelings
	if len(rl) == 0 || rl[len(rl)-1].TargetLabel != "job" || rl[len(rl)-1].Replacement != "txpipe-$1" ||
		!slices.Equal(rl[len(rl)-1].SourceLabels, []string{"__meta_kubernetes_pod_label_app_kubernetes_io_component"}) {
		t.Errorf("PodMonitor %s: the last relabeling must set job to txpipe-<component>, got %+v", pm.Name, rl)
	}
}

// TestKubernetesChecksFail proves that each check can fail: every case
// breaks the rendered manifests in one way and expects its check to say so.
func TestKubernetesChecksFail(t *testing.T) {
	docs := render(t, filepath.Join(deployDir, "k8s"))
	drain := drainTimeout(t)
	fresh := func(t *testing.T) *manifests {
		m, err := decode(docs)
		if err != nil {
			t.Fatal(err)
		}
		m.drainDefault = drain
		return m
	}
	container := func(m *manifests, role string) *corev1.Container {
		return &m.deployment(role).Spec.Template.Spec.Containers[0]
	}
	ptr := func(b bool) *bool { return &b }
	cases := []struct {
		check, what string
		mutate      func(*manifests)
	}{
		{"roles", "no relay Deployment", func(m *manifests) {
			m.deployments = slices.DeleteFunc(m.deployments, func(d *appsv1.Deployment) bool { return d == m.deployment("relay") })
		}},
		{"probes", "worker without readiness probe", func(m *manifests) { container(m, "worker").ReadinessProbe = nil }},
		{"probes", "liveness probe on /readyz", func(m *manifests) { container(m, "ingest").LivenessProbe.HTTPGet.Path = "/readyz" }},
		{"probes", "liveness probe on the API port", func(m *manifests) { container(m, "relay").LivenessProbe.HTTPGet.Port.StrVal = "http" }},
		{"security", "runAsNonRoot false", func(m *manifests) { container(m, "ingest").SecurityContext.RunAsNonRoot = ptr(false) }},
		{"security", "no readOnlyRootFilesystem", func(m *manifests) { container(m, "worker").SecurityContext.ReadOnlyRootFilesystem = nil }},
		{"security", "privilege escalation allowed", func(m *manifests) { container(m, "relay").SecurityContext.AllowPrivilegeEscalation = ptr(true) }},
		{"security", "capabilities kept", func(m *manifests) { container(m, "relay").SecurityContext.Capabilities.Drop = nil }},
		{"security", "no seccomp profile on the Job", func(m *manifests) { m.jobs[0].Spec.Template.Spec.SecurityContext.SeccompProfile = nil }},
		{"resources", "no memory limit", func(m *manifests) { delete(container(m, "worker").Resources.Limits, corev1.ResourceMemory) }},
		{"resources", "no CPU request on migrate", func(m *manifests) {
			delete(m.jobs[0].Spec.Template.Spec.InitContainers[0].Resources.Requests, corev1.ResourceCPU)
		}},
		{"grace", "grace period equal to the drain", func(m *manifests) {
			g := int64(m.drainDefault / time.Second)
			m.deployment("worker").Spec.Template.Spec.TerminationGracePeriodSeconds = &g
		}},
		{"grace", "drain longer than the grace period", func(m *manifests) { m.configMaps[0].Data["TXPIPE_SHUTDOWN_TIMEOUT"] = "40s" }},
		{"settings", "no envFrom", func(m *manifests) { container(m, "ingest").EnvFrom = nil }},
		{"settings", "Secret not mounted", func(m *manifests) { container(m, "worker").VolumeMounts = nil }},
		{"settings", "no metadata-keys in the Secret", func(m *manifests) { delete(m.secrets[0].Data, "metadata-keys") }},
		{"settings", "database URL in the ConfigMap", func(m *manifests) { m.configMaps[0].Data["TXPIPE_DATABASE_URL"] = "postgres://u:p@h/db" }},
		{"hpa", "no autoscaler", func(m *manifests) { m.hpas = nil }},
		{"hpa", "autoscaler on the workers", func(m *manifests) { m.hpas[0].Spec.ScaleTargetRef.Name = "txpipe-worker" }},
		{"hpa", "replicas beside the autoscaler", func(m *manifests) { r := int32(3); m.deployment("ingest").Spec.Replicas = &r }},
		{"pdb", "no worker budget", func(m *manifests) {
			m.pdbs = slices.DeleteFunc(m.pdbs, func(p *policyv1.PodDisruptionBudget) bool { return p.Name == "txpipe-worker" })
		}},
		{"job", "no Job", func(m *manifests) { m.jobs = nil }},
		{"job", "Job without migrate", func(m *manifests) { m.jobs[0].Spec.Template.Spec.InitContainers[0].Args = []string{"topics"} }},
		{"worker-replicas", "13 workers for 12 partitions", func(m *manifests) { r := int32(13); m.deployment("worker").Spec.Replicas = &r }},
		{"images", "two images", func(m *manifests) { container(m, "relay").Image = "txpipe:other" }},
		{"services", "no Services", func(m *manifests) { m.services = nil }},
		{"upgrade-step", "Secret without the label", func(m *manifests) { delete(m.secrets[0].Labels, "app.kubernetes.io/component") }},
		{"upgrade-step", "worker labelled migrate", func(m *manifests) { m.deployment("worker").Labels["app.kubernetes.io/component"] = "migrate" }},
	}
	for _, tc := range cases {
		t.Run(tc.check+"/"+tc.what, func(t *testing.T) {
			m := fresh(t)
			c := checkNamed(t, k8sChecks, tc.check)
			if p := c.fn(m); len(p) > 0 {
				t.Fatalf("check %s fails on the unbroken manifests: %v", c.name, p)
			}
			tc.mutate(m)
			if p := c.fn(m); len(p) == 0 {
				t.Errorf("check %s passes manifests that break it", c.name)
			}
		})
	}
}

// TestStrictDecoding proves that decode refuses an unknown field and an
// unknown kind.
func TestStrictDecoding(t *testing.T) {
	for name, doc := range map[string]string{
		"unknown field": "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  replica: 2\n",
		"nested field":  "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec:\n  ports: [{port: 80, targetport: 8080}]\n",
		"unknown kind":  "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n",
		"old version":   "apiVersion: autoscaling/v1\nkind: HorizontalPodAutoscaler\nmetadata: {name: x}\n",
		"pod monitor":   "apiVersion: monitoring.coreos.com/v1\nkind: PodMonitor\nmetadata: {name: x}\nspec:\n  podMetricEndpoints: []\n",
	} {
		if _, err := decode([][]byte{[]byte(doc)}); err == nil {
			t.Errorf("%s: decode() accepted\n%s", name, doc)
		}
	}
}
