package app

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// The CPU knob's cost, for the README: go test -run '^$' -bench Knob ./cowweb/app
//
//   - ns per call of rand.Intn(len(cows)), locked (v1.1.1 as built with Go 1.14) and lock-free;
//   - ms per request at load 640 and 1024 (load×load calls);
//   - requests/s of load 640 with 1, 2 and 8 requests at once in one process (one Pod): the locked source makes
//     them contend.
func BenchmarkKnob(b *testing.B) {
	for _, source := range []string{RandLocked, RandLockFree} {
		b.Run("call/"+source, func(b *testing.B) {
			k := newCPUKnob(source)
			b.ResetTimer()
			k.burnCalls(b.N)
		})
		for _, load := range []int{640, 1024} {
			b.Run(fmt.Sprintf("request/%s/load=%d", source, load), func(b *testing.B) {
				k := newCPUKnob(source)
				start := time.Now()
				for range b.N {
					k.burn(load)
				}
				b.ReportMetric(float64(time.Since(start).Microseconds())/1000/float64(b.N), "ms/request")
			})
		}
		for _, concurrent := range []int{1, 2, 8} {
			b.Run(fmt.Sprintf("concurrent/%s/load=640/n=%d", source, concurrent), func(b *testing.B) {
				k := newCPUKnob(source)
				start := time.Now()
				var wg sync.WaitGroup
				for w := range concurrent {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for i := w; i < b.N; i += concurrent {
							k.burn(640)
						}
					}()
				}
				wg.Wait()
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "requests/s")
			})
		}
	}
}
