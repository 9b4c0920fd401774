// Package clusterwatch feeds the timeline from a cluster's API: the EndpointSlice controller's view of each Pod's
// endpoint, and what "endpoint ready" means for everyone who routes or counts.
package clusterwatch

import (
	"context"
	"fmt"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/rollout-lab/rollout-lab/timeline"
)

// endpointKey names one address of one EndpointSlice.
type endpointKey struct{ slice, address string }

// EndpointReady says whether an endpoint takes new connections: ready, or with no readiness given (the API's
// rule for consumers of EndpointSlices).
func EndpointReady(e discoveryv1.Endpoint) bool {
	return e.Conditions.Ready == nil || *e.Conditions.Ready
}

// WatchEndpointSlices records, from the namespace's EndpointSlices as the EndpointSlice controller writes them,
// when each Pod's endpoint stops being ready (terminating, or gone). It returns once the informer has synced.
func WatchEndpointSlices(ctx context.Context, client kubernetes.Interface, namespace string, record func(timeline.Event)) error {
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(namespace))
	informer := factory.Discovery().V1().EndpointSlices().Informer()
	ready := map[endpointKey]bool{} // touched only by the informer's one handler goroutine
	observe := func(slice *discoveryv1.EndpointSlice, deleted bool) {
		seen := map[endpointKey]bool{}
		for _, ep := range slice.Endpoints {
			if len(ep.Addresses) == 0 {
				continue
			}
			key := endpointKey{slice.Name, ep.Addresses[0]}
			seen[key] = true
			isReady := !deleted && EndpointReady(ep)
			if ready[key] && !isReady {
				e := timeline.Event{Type: timeline.EventEndpointNotReady, Namespace: namespace, PodIP: ep.Addresses[0]}
				if ep.TargetRef != nil {
					e.Pod, e.UID = ep.TargetRef.Name, string(ep.TargetRef.UID)
				}
				if ep.NodeName != nil {
					e.Node = *ep.NodeName
				}
				if ep.Conditions.Terminating != nil && *ep.Conditions.Terminating {
					e.Message = "terminating"
				}
				record(e)
			}
			ready[key] = isReady
		}
		for key, wasReady := range ready {
			if key.slice == slice.Name && !seen[key] {
				if wasReady {
					record(timeline.Event{Type: timeline.EventEndpointNotReady, Namespace: namespace, PodIP: key.address, Message: "removed from the slice"})
				}
				delete(ready, key)
			}
		}
	}
	_, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { observe(obj.(*discoveryv1.EndpointSlice), false) },
		UpdateFunc: func(_, obj any) { observe(obj.(*discoveryv1.EndpointSlice), false) },
		DeleteFunc: func(obj any) {
			if s, ok := Deleted(obj).(*discoveryv1.EndpointSlice); ok {
				observe(s, true)
			}
		},
	})
	if err != nil {
		return err
	}
	factory.Start(ctx.Done())
	syncCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if !cache.WaitForCacheSync(syncCtx.Done(), informer.HasSynced) {
		return fmt.Errorf("watch EndpointSlices in %s: not synced", namespace)
	}
	return nil
}

// Deleted is the object of an informer's delete notification, which is a tombstone when the watch missed the
// deletion and a relist found the object gone.
func Deleted(obj any) any {
	if tombstone, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		return tombstone.Obj
	}
	return obj
}
