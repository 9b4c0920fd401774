// Package rundir lays out a run's results directory — results/<plan>/<UTC time>/ — and its manifest, run.json,
// from which every report can be regenerated.
package rundir

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/rollout-lab/rollout-lab/load"
	"github.com/rollout-lab/rollout-lab/plan"
)

// Files and directories inside a results directory.
const (
	ManifestFile    = "run.json"
	TSDBDir         = "tsdb"
	PlanFile        = "plan.yaml"
	TokenFile       = "prometheus.token"
	timestampLayout = "20060102T150405Z"
)

// Provenance says what produced the results.
type Provenance struct {
	Tool      string            `json:"tool"`
	Version   string            `json:"version"`
	GoVersion string            `json:"goVersion"`
	Platform  string            `json:"platform"`
	Host      string            `json:"host"`
	Libraries map[string]string `json:"libraries,omitempty"`
	PlanHash  string            `json:"planSHA256,omitempty"`
	// Target describes where the app ran: "none" for a bare attack, the lab model or the cluster for apply.
	Target map[string]string `json:"target,omitempty"`
}

// PrometheusInfo says where the run's metrics are.
type PrometheusInfo struct {
	// Embedded: in TSDBDir of the results directory. Otherwise URL is the external Prometheus.
	Embedded       bool          `json:"embedded"`
	URL            string        `json:"url,omitempty"`
	ScrapeInterval time.Duration `json:"scrapeInterval"`
}

// A results directory keeps each case run's own files under cases/<case>/run-<n>/.
const (
	// EventsFile is a run's Pod lifecycle (timeline events, in time order).
	EventsFile = "events.json"
	// FailuresFile is a run's failed requests, kept one by one up to a bound.
	FailuresFile = "failures.json"
)

// RunDir is where a case run's own files live in a results directory.
func RunDir(resultsDir, caseName, run string) string {
	return filepath.Join(resultsDir, "cases", caseName, "run-"+run)
}

// RunRecord is one run of one case as the runner saw it.
type RunRecord struct {
	Labels  load.Labels  `json:"labels"`
	Summary load.Summary `json:"attacker"`
	// Drain extends the rollout window past the rollout's completion.
	Drain time.Duration `json:"drain"`
	// Attribution counts failed requests by why they failed (apply only).
	Attribution map[string]uint64 `json:"attribution,omitempty"`
	// AttributionByClass splits each cause by error class.
	AttributionByClass map[string]map[string]uint64 `json:"attributionByClass,omitempty"`
	// InFlight lists the Pods that got SIGTERM during the run with their in-flight requests (apply only).
	InFlight []PodInFlight `json:"inFlight,omitempty"`
	// Installed is what the release installed for the run, read from its rendered Deployment (apply only).
	Installed *Installed `json:"installed,omitempty"`
	// InProgress marks a run recorded when its load began and never completed: the runner was killed (SIGKILL, a
	// crash, the machine) during it. Its samples in Prometheus are all there is of it; Summary.Stopped is set.
	InProgress bool `json:"inProgress,omitempty"`
}

// Installed is what a run's release set up, as its rendered Deployment says: the report's conditions.
type Installed struct {
	Replicas      int           `json:"replicas"`
	PreStopAction string        `json:"preStopAction"` // exec, sleep, httpGet or none
	PreStopSleep  time.Duration `json:"preStopSleep"`
	Shutdown      string        `json:"shutdown"` // graceful, immediate or drain
	DrainDelay    time.Duration `json:"drainDelay,omitempty"`
	GracePeriod   time.Duration `json:"terminationGracePeriod"`
	CPULoad       int           `json:"cpuLoad"` // 0 when the CPU knob is off
}

// PodInFlight is how many requests one Pod had in flight at its SIGTERM and at its exit, counted from the
// attacker's side: it knows the Pod each request's connection reached, and when each request started and ended.
type PodInFlight struct {
	Pod       string `json:"pod"` // UID, or address when the UID is unknown
	AtSIGTERM uint64 `json:"atSigterm"`
	AtExit    uint64 `json:"atExit"`
}

// Manifest is run.json.
type Manifest struct {
	Kind     string     `json:"kind"` // attack or apply
	Plan     *plan.Plan `json:"plan"`
	Started  time.Time  `json:"started"`
	Finished time.Time  `json:"finished,omitzero"`
	Partial  bool       `json:"partial"`
	// Resumed lists when `runner apply --resume` continued this run.
	Resumed    []time.Time    `json:"resumed,omitempty"`
	Provenance Provenance     `json:"provenance"`
	Prometheus PrometheusInfo `json:"prometheus"`
	Runs       []RunRecord    `json:"runs"`
	// Check holds runner check's expectations (--expect KEY=VALUE) when the run is a check: its reports carry
	// the verdicts, and `runner report` judges again from them.
	Check map[string]string `json:"check,omitempty"`
}

// Create makes a new results directory under root for a plan, named by the UTC start time.
func Create(root, planName string, started time.Time) (string, error) {
	dir := filepath.Join(root, planName, started.UTC().Format(timestampLayout))
	if _, err := os.Stat(dir); err == nil {
		return "", fmt.Errorf("results directory %s exists already", dir)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	return dir, nil
}

// Hash is the SHA-256 of a plan file's bytes, for provenance.
func Hash(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// NewProvenance describes this process.
func NewProvenance(version string, libraries map[string]string) Provenance {
	host, _ := os.Hostname()
	return Provenance{Tool: "rollout-lab", Version: version, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH,
		Host: host, Libraries: libraries}
}

// Save writes run.json atomically.
func (m *Manifest) Save(dir string) error {
	stored := *m
	if m.Plan != nil {
		stored.Plan = m.Plan.Redacted()
	}
	stored.Prometheus.URL = plan.RedactURL(m.Prometheus.URL)
	data, err := json.MarshalIndent(&stored, "", "  ")
	if err != nil {
		return err
	}
	return WriteFileAtomic(filepath.Join(dir, ManifestFile), append(data, '\n'), 0o644)
}

// Load reads run.json of a results directory.
func Load(dir string) (*Manifest, error) {
	data, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s is not a results directory: no %s", dir, ManifestFile)
	}
	if err != nil {
		return nil, err
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, ManifestFile), err)
	}
	if m.Plan == nil {
		return nil, fmt.Errorf("%s: no plan", filepath.Join(dir, ManifestFile))
	}
	return &m, nil
}

// WriteFileAtomic writes data through a temporary file and a rename, so a reader never sees half a file.
func WriteFileAtomic(path string, data []byte, mode os.FileMode) error {
	return WriteAtomic(path, mode, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
}

// WriteAtomic is WriteFileAtomic for content produced by write.
func WriteAtomic(path string, mode os.FileMode, write func(io.Writer) error) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := write(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
