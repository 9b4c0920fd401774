package experiment

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/rollout-lab/rollout-lab/embedprom"
	"github.com/rollout-lab/rollout-lab/load"
	"github.com/rollout-lab/rollout-lab/plan"
	"github.com/rollout-lab/rollout-lab/timeline/clusterwatch"
)

// RunnerImage is the project's image (cmd runner); in-cluster workers run it unless the plan names another.
const RunnerImage = "ghcr.io/rollout-lab/runner"

// WorkersJob is the scrape job of in-cluster workers in the embedded Prometheus.
const WorkersJob = "rollout-lab-workers"

// workerMetricsPort is where a worker serves its metrics.
const workerMetricsPort = 9464

// WorkerJob renders the Job of in-cluster load workers for one run of a case: Pods each sending 1/N of the load to
// url, their metrics announced with the prometheus.io scrape annotations.
func WorkerJob(p *plan.Plan, c plan.Case, run int, url, version string) (*batchv1.Job, error) {
	n := c.Load.InCluster.Pods
	loadJSON, err := json.Marshal(c.Load)
	if err != nil {
		return nil, err
	}
	image := c.Load.InCluster.Image
	if image == "" {
		image = RunnerImage + ":" + version
	}
	labels := map[string]string{"app.kubernetes.io/name": clusterwatch.WorkerLabel, "app.kubernetes.io/part-of": "rollout-lab",
		"rollout-lab/case": c.Name, "rollout-lab/run": strconv.Itoa(run)}
	// Long enough for the load, its timeout and the linger; then the Job gives up.
	deadline := int64((c.Load.TotalDuration() + c.Load.Timeout.D() + 5*time.Minute).Seconds())
	return &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: workerJobName(c.Name, run), Labels: labels},
		Spec: batchv1.JobSpec{
			Parallelism: ptr.To(int32(n)), Completions: ptr.To(int32(n)), BackoffLimit: ptr.To[int32](0),
			ActiveDeadlineSeconds: &deadline,
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: map[string]string{
					"prometheus.io/scrape": "true", "prometheus.io/port": strconv.Itoa(workerMetricsPort), "prometheus.io/path": "/metrics"}},
				Spec: corev1.PodSpec{
					RestartPolicy:                corev1.RestartPolicyNever,
					AutomountServiceAccountToken: ptr.To(false),
					SecurityContext: &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To[int64](65532),
						SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}},
					Containers: []corev1.Container{{
						Name: "worker", Image: image,
						Args: []string{"worker", "--url", url, "--load", string(loadJSON), "--share", strconv.Itoa(n),
							"--plan", p.Name, "--case", c.Name, "--run", strconv.Itoa(run), "--metrics-listen", fmt.Sprintf(":%d", workerMetricsPort),
							"--linger", "10s"},
						Ports: []corev1.ContainerPort{{Name: "metrics", ContainerPort: workerMetricsPort}},
						SecurityContext: &corev1.SecurityContext{AllowPrivilegeEscalation: ptr.To(false), ReadOnlyRootFilesystem: ptr.To(true),
							Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}},
					}},
				},
			},
		},
	}, nil
}

func workerJobName(caseName string, run int) string {
	name := strings.NewReplacer(".", "-", "_", "-").Replace(fmt.Sprintf("rollout-lab-load-%s-%d", caseName, run))
	if len(name) > 63 {
		name = strings.TrimRight(name[:63], "-")
	}
	return name
}

// inClusterLoad runs a worker Job to its end: the embedded Prometheus (when there is one) scrapes the workers'
// addresses, which it reaches in the lab; with an external Prometheus that one must honour the annotations. The run's
// summary is then read from Prometheus, the only place that sees every worker.
// started is closed once every worker runs.
func inClusterLoad(ctx context.Context, client kubernetes.Interface, namespace string, job *batchv1.Job, prom *embedprom.Server,
	api func(ctx context.Context, q string) (map[string]float64, error), labels load.Labels, started chan<- struct{}) (load.Summary, error) {
	jobs := client.BatchV1().Jobs(namespace)
	created, err := jobs.Create(ctx, job, metav1.CreateOptions{})
	if err != nil {
		return load.Summary{}, fmt.Errorf("in-cluster load: %w", err)
	}
	defer func() {
		// The Job and its Pods go whatever happened.
		_ = jobs.Delete(context.WithoutCancel(ctx), created.Name, metav1.DeleteOptions{PropagationPolicy: ptr.To(metav1.DeletePropagationBackground)})
	}()
	summary := load.Summary{Start: time.Now()}
	selector := "batch.kubernetes.io/job-name=" + created.Name
	announced, isStarted := "", false
	err = wait.PollUntilContextCancel(ctx, 250*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		pods, err := client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return false, err
		}
		var targets []embedprom.Target
		var key strings.Builder // the addresses, to announce only a change
		for _, p := range pods.Items {
			if p.Status.PodIP != "" && p.Status.Phase == corev1.PodRunning {
				targets = append(targets, embedprom.Target{Address: fmt.Sprintf("%s:%d", p.Status.PodIP, workerMetricsPort)})
				key.WriteString(p.Status.PodIP + ",")
			}
		}
		if !isStarted && len(targets) == int(*job.Spec.Completions) {
			isStarted = true
			summary.Start = time.Now()
			close(started)
		}
		if prom != nil && len(targets) > 0 && key.String() != announced {
			announced = key.String()
			if err := prom.SetTargets(WorkersJob, targets); err != nil {
				return false, err
			}
		}
		j, err := jobs.Get(ctx, created.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, c := range j.Status.Conditions {
			if c.Status == corev1.ConditionTrue && c.Type == batchv1.JobFailed {
				return false, fmt.Errorf("in-cluster load: job %s failed: %s", created.Name, c.Message)
			}
		}
		done := j.Status.Succeeded == *job.Spec.Completions
		if done && !isStarted { // workers too quick to be seen running together
			isStarted = true
			close(started)
		}
		return done, nil
	})
	summary.End = time.Now()
	if err != nil {
		summary.Stopped = ctx.Err() != nil
		if !summary.Stopped {
			return summary, err
		}
	}
	matchers := fmt.Sprintf(`plan=%q,case=%q,run=%q`, labels.Plan, labels.Case, labels.Run)
	byClass, err := api(context.WithoutCancel(ctx), fmt.Sprintf("sum by (error) (last_over_time(%s{%s}[1h]))", load.MetricRequests, matchers))
	if err != nil {
		return summary, err
	}
	summary.ByClass = map[string]uint64{}
	for class, n := range byClass {
		summary.ByClass[class] = uint64(math.Round(n))
		summary.Completed += uint64(math.Round(n))
	}
	sent, err := api(context.WithoutCancel(ctx), fmt.Sprintf("sum(last_over_time(%s{%s}[1h]))", load.MetricSent, matchers))
	if err != nil {
		return summary, err
	}
	summary.Sent = uint64(math.Round(sent[""]))
	return summary, nil
}
