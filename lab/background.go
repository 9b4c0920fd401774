package lab

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
)

// Background is the rest of a cluster as every node's kube-proxy sees it: Services, each with its endpoints, that
// no load goes to. kube-proxy programs them as any others, so every sync costs what it costs on a cluster of that
// size, and service-out grows because kube-proxy takes longer, not because a number says so.
type Background struct {
	Services            int
	EndpointsPerService int
}

// BackgroundNamespace holds the background Services.
const BackgroundNamespace = "lab-background"

// backgroundWorkers create the objects side by side: one at a time, 10 000 Services and slices take minutes.
const backgroundWorkers = 16

// makeBackground brings the lab's background to b: selector-less ClusterIP Services (the apiserver allocates their
// addresses as for any Service) with an EndpointSlice each, whose ready endpoints are addresses of the network's
// background range, which no one answers. A lab restarted from its state directory keeps what is already there
// and fixes what differs (another network block, another size).
func makeBackground(ctx context.Context, config *rest.Config, b Background, cidr string) (time.Duration, error) {
	start := time.Now()
	fast := rest.CopyConfig(config)
	fast.QPS, fast.Burst = -1, 0 // the lab's own apiserver: no client-side rate limit
	client, err := kubernetes.NewForConfig(fast)
	if err != nil {
		return 0, err
	}
	existing, err := client.CoreV1().Services(BackgroundNamespace).List(ctx, metav1.ListOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return 0, err
	}
	if b.Services == 0 && (existing == nil || len(existing.Items) == 0) {
		return 0, nil
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: BackgroundNamespace, Labels: map[string]string{"app.kubernetes.io/managed-by": "rollout-lab"}}}
	if _, err := client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return 0, err
	}
	addresses, err := backgroundAddresses(cidr)
	if err != nil {
		return 0, err
	}
	// What a restarted lab already has (same Services, same addresses) is left as it is.
	upToDate := map[string]bool{}
	if existing != nil && len(existing.Items) > 0 {
		have, err := client.DiscoveryV1().EndpointSlices(BackgroundNamespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			return 0, err
		}
		for _, s := range have.Items {
			i, err := strconv.Atoi(strings.TrimPrefix(s.Name, "bg-"))
			upToDate[s.Name] = err == nil && slices.Equal(endpointAddresses(s.Endpoints), backgroundEndpoints(i, b.EndpointsPerService, addresses))
		}
	}
	jobs := make(chan int)
	errs := make(chan error, backgroundWorkers)
	var wg sync.WaitGroup
	for range backgroundWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				if upToDate[backgroundName(i)] {
					continue
				}
				if err := ensureBackgroundService(ctx, client, i, b.EndpointsPerService, addresses); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	failed := func() error {
		select {
		case err := <-errs:
			return err
		default:
			return nil
		}
	}
	var sendErr error
	for i := 0; i < b.Services && sendErr == nil; i++ {
		select {
		case jobs <- i:
		case sendErr = <-errs:
		case <-ctx.Done():
			sendErr = ctx.Err()
		}
	}
	close(jobs)
	wg.Wait()
	if sendErr == nil {
		sendErr = failed()
	}
	if sendErr != nil {
		return time.Since(start), fmt.Errorf("background Services: %w", sendErr)
	}
	// A smaller background than the last start's: the extra Services go (their slices with them, by owner).
	if existing != nil {
		for _, svc := range existing.Items {
			if i, err := strconv.Atoi(svc.Labels[backgroundIndexLabel]); err == nil && i >= b.Services {
				if err := client.CoreV1().Services(BackgroundNamespace).Delete(ctx, svc.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
					return time.Since(start), err
				}
			}
		}
	}
	return time.Since(start), nil
}

const backgroundIndexLabel = "rollout-lab.io/background-index"

// backgroundAddresses are the hosts of cidr; Services share them (no connection goes to any).
func backgroundAddresses(cidr string) ([]string, error) {
	ip, ipnet, err := net.ParseCIDR(cidr)
	if err != nil {
		return nil, fmt.Errorf("background range %q: %w", cidr, err)
	}
	ones, bits := ipnet.Mask.Size()
	hosts := 1<<(bits-ones) - 2
	base := ip.Mask(ipnet.Mask).To4()
	out := make([]string, 0, hosts)
	for h := 1; h <= hosts; h++ {
		v := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3]) + uint32(h)
		out = append(out, net.IPv4(byte(v>>24), byte(v>>16), byte(v>>8), byte(v)).String())
	}
	return out, nil
}

// ensureBackgroundService makes Service i and its EndpointSlice, or updates the slice of one already there.
func ensureBackgroundService(ctx context.Context, client kubernetes.Interface, i, endpoints int, addresses []string) error {
	name := backgroundName(i)
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: BackgroundNamespace, Labels: map[string]string{backgroundIndexLabel: strconv.Itoa(i)}},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}},
	}
	created, err := client.CoreV1().Services(BackgroundNamespace).Create(ctx, svc, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		created, err = client.CoreV1().Services(BackgroundNamespace).Get(ctx, name, metav1.GetOptions{})
	}
	if err != nil {
		return err
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: BackgroundNamespace,
			Labels:          map[string]string{discoveryv1.LabelServiceName: name, discoveryv1.LabelManagedBy: "rollout-lab"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Service", Name: name, UID: created.UID}}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	for _, address := range backgroundEndpoints(i, endpoints, addresses) {
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{Addresses: []string{address},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)}})
	}
	slices := client.DiscoveryV1().EndpointSlices(BackgroundNamespace)
	_, err = slices.Create(ctx, slice, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		var old *discoveryv1.EndpointSlice
		if old, err = slices.Get(ctx, name, metav1.GetOptions{}); err == nil {
			slice.ResourceVersion = old.ResourceVersion
			_, err = slices.Update(ctx, slice, metav1.UpdateOptions{})
		}
	}
	return err
}

func backgroundName(i int) string { return fmt.Sprintf("bg-%05d", i) }

// backgroundEndpoints are Service i's endpoint addresses: the range's addresses in turn, shared among Services.
func backgroundEndpoints(i, endpoints int, addresses []string) []string {
	out := make([]string, endpoints)
	for e := range out {
		out[e] = addresses[(i*endpoints+e)%len(addresses)]
	}
	return out
}

func endpointAddresses(endpoints []discoveryv1.Endpoint) []string {
	var out []string
	for _, e := range endpoints {
		out = append(out, e.Addresses...)
	}
	return out
}
