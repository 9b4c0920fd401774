package experiment

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rollout-lab/rollout-lab/analysis/attribution"
	"github.com/rollout-lab/rollout-lab/load"
	"github.com/rollout-lab/rollout-lab/plan"
)

// An hour of load must not cost an hour's worth of memory: the attacker's path (pacer, vegeta, metrics, the
// attribution of outcomes) keeps counters and histograms, never a record per request. Ten times the requests at
// the same rate must stay within 1.2 times the peak heap. (The attribution holds the outcomes of its last settle
// time: memory that grows with the rate, bounded, not with the run's length.)
func TestMemoryDoesNotGrowWithRequests(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "moo") }))
	defer srv.Close()
	peak := func(requests int) uint64 {
		const rate = 2000
		l := plan.Load{Rate: rate, Duration: plan.Duration(time.Duration(requests) * time.Second / rate), Timeout: plan.Duration(5 * time.Second),
			Connection: plan.ConnectionPooled, Connections: 64, Workers: 64, MaxWorkers: 256}
		opts, err := load.OptionsFromPlan(srv.URL, l, load.Labels{Plan: "memory", Case: "c", Run: "1"})
		if err != nil {
			t.Fatal(err)
		}
		// The attributor holds every routed outcome for its settle time (rate × settle of them, whatever the run's
		// length): a short settle keeps that bounded part small next to what this test looks for.
		attributor := attribution.NewAttributor(200*time.Millisecond, attribution.FailureSampleLimit)
		opts.Observe = attributor.Outcome
		done := make(chan struct{})
		var most uint64
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			var m runtime.MemStats
			for {
				runtime.GC()
				runtime.ReadMemStats(&m)
				most = max(most, m.HeapAlloc)
				select {
				case <-done:
					return
				case <-time.After(250 * time.Millisecond):
				}
			}
		}()
		summary, err := load.Attack(context.Background(), opts, load.NewMetrics(prometheus.NewRegistry()))
		close(done)
		wg.Wait()
		if err != nil || summary.Completed != uint64(requests) {
			t.Fatalf("%d requests: completed %d: %v", requests, summary.Completed, err)
		}
		attributor.Finish()
		return most
	}
	peak(2000) // warm up: connections, pools, first allocations
	short, long := peak(4000), peak(40000)
	t.Logf("peak heap: %.1f MiB for 4000 requests, %.1f MiB for 40000", float64(short)/(1<<20), float64(long)/(1<<20))
	if float64(long) > 1.2*float64(short) {
		t.Errorf("peak heap grew %.2f× for 10× the requests (%d → %d bytes)", float64(long)/float64(short), short, long)
	}
}
