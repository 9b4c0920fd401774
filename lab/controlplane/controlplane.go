// Package controlplane runs a Kubernetes control plane in the runner's process: etcd, kube-apiserver,
// kube-controller-manager and kube-scheduler from k8s.io/kubernetes, on loopback, with TLS, client certificates
// and RBAC, their state, certificates, logs and kubeconfig under one directory.
package controlplane

import (
	"context"
	"crypto/x509/pkix"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/rollout-lab/rollout-lab/internal/k8sversion"
	"github.com/spf13/pflag"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/apimachinery/pkg/util/wait"
	utilcompatibility "k8s.io/apiserver/pkg/util/compatibility"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	basecompatibility "k8s.io/component-base/compatibility"
	"k8s.io/component-base/configz"
	"k8s.io/klog/v2"
	apiserverapp "k8s.io/kubernetes/cmd/kube-apiserver/app"
	apiserveroptions "k8s.io/kubernetes/cmd/kube-apiserver/app/options"
	kcmapp "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	kcmoptions "k8s.io/kubernetes/cmd/kube-controller-manager/app/options"
	schedulerapp "k8s.io/kubernetes/cmd/kube-scheduler/app"
	scheduleroptions "k8s.io/kubernetes/cmd/kube-scheduler/app/options"
)

// KubernetesVersion is the release the lab's components come from (internal/k8sversion says how it is found).
var KubernetesVersion = k8sversion.Version()

// Controllers the lab's controller-manager runs: what Deployments, Services, namespaces and Jobs (in-cluster load) need.
var Controllers = []string{"deployment-controller", "replicaset-controller", "endpointslice-controller", "garbage-collector-controller",
	"serviceaccount-controller", "serviceaccount-token-controller", "namespace-controller", "root-ca-certificate-publisher-controller",
	"job-controller"}

// ServiceClusterIPRange is the Services' virtual address range.
const ServiceClusterIPRange = "10.96.0.0/16"

// running makes the lab one per process: client-go keeps process-wide informer names, so two would collide.
var running sync.Mutex

// ErrAlreadyRunning is returned by Start while another lab runs in this process.
var ErrAlreadyRunning = errors.New("a lab is already running in this process; stop it first (run labs in separate processes)")

// ControlPlane is a running etcd, apiserver, controller-manager and scheduler.
type ControlPlane struct {
	Dir        string
	Kubeconfig string
	Config     *rest.Config
	Client     kubernetes.Interface
	Server     string // https://127.0.0.1:PORT
	// EtcdURL is etcd's client URL (TLS, the etcd CA's client certificates only).
	EtcdURL string
	// APIReadyAfter is how long the start took until the apiserver answered /readyz.
	APIReadyAfter time.Duration
	pki           *pki
	etcd          *embed.Etcd
	cancel        context.CancelFunc
	done          []chan error
	klogFile      *os.File
	logger        *slog.Logger
	stopOnce      sync.Once
	stopErr       error
	opts          Options
	// NodeServer is the apiserver's URL on the node network (empty without one).
	NodeServer string
	// KubeProxyKubeconfig authenticates as system:kube-proxy (bound to system:node-proxier by the default RBAC
	// policy) to NodeServer: what every node's kube-proxy uses.
	KubeProxyKubeconfig string
}

// Options configure a control plane.
type Options struct {
	// Dir holds the state, certificates, logs and kubeconfigs.
	Dir    string
	Logger *slog.Logger
	// NodeNetworkIP, when set, is the host's address on the lab's node network: the apiserver also serves there
	// (same TLS and client certificates), since a node's namespace has a loopback of its own, and a kubeconfig
	// for the nodes' kube-proxies (KubeProxyKubeconfig) points there.
	NodeNetworkIP net.IP
	// ClusterCIDR, when set, turns on the node IPAM controller, which gives every Node a Pod CIDR from it
	// (Node.spec.podCIDR, /cni.NodeCIDRMaskSize), as kube-controller-manager --allocate-node-cidrs does.
	ClusterCIDR      string
	NodeCIDRMaskSize int
}

// Start starts the components with their state, certificates, logs and kubeconfig under opts.Dir.
func Start(ctx context.Context, opts Options) (_ *ControlPlane, err error) {
	if !running.TryLock() {
		return nil, ErrAlreadyRunning
	}
	logger, dir := opts.Logger, opts.Dir
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cp := &ControlPlane{Dir: dir, logger: logger, opts: opts}
	defer func() {
		if err != nil {
			cp.Stop()
		}
	}()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := cp.redirectKlog(); err != nil {
		return nil, err
	}
	if cp.pki, err = newPKI(filepath.Join(dir, "pki"), opts.NodeNetworkIP); err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	cp.cancel = cancel

	start := time.Now()
	etcdURL, err := cp.startEtcd()
	if err != nil {
		return nil, err
	}
	logger.Debug("etcd ready", "took", time.Since(start))
	if err := cp.startAPIServer(runCtx, etcdURL); err != nil {
		return nil, err
	}
	if err := cp.writeKubeconfig(); err != nil {
		return nil, err
	}
	if opts.NodeNetworkIP != nil {
		if err := cp.writeKubeProxyKubeconfig(); err != nil {
			return nil, err
		}
	}
	if err := cp.waitHealthy(ctx); err != nil {
		return nil, err
	}
	cp.APIReadyAfter = time.Since(start)
	logger.Debug("apiserver ready", "took", cp.APIReadyAfter)
	if err := cp.forgetNodesOfAnotherNetwork(ctx); err != nil {
		return nil, err
	}
	if err := cp.startControllerManager(runCtx); err != nil {
		return nil, err
	}
	if err := cp.startScheduler(runCtx); err != nil {
		return nil, err
	}
	logger.Info("lab control plane up", "server", cp.Server, "kubeconfig", cp.Kubeconfig, "took", time.Since(start).Round(time.Millisecond))
	return cp, nil
}

// redirectKlog sends the components' klog output to a file of the lab: klog is process-wide.
func (cp *ControlPlane) redirectKlog() error {
	f, err := os.OpenFile(filepath.Join(cp.Dir, "components.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cp.klogFile = f
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	for name, value := range map[string]string{"logtostderr": "false", "alsologtostderr": "false", "stderrthreshold": "FATAL", "v": "0"} {
		if err := fs.Set(name, value); err != nil {
			return err
		}
	}
	klog.SetOutput(f)
	return nil
}

func freeLoopbackPort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func (cp *ControlPlane) startEtcd() (string, error) {
	clientPort, err := freeLoopbackPort()
	if err != nil {
		return "", err
	}
	peerPort, err := freeLoopbackPort()
	if err != nil {
		return "", err
	}
	// TLS with client-certificate authentication on both ports: a local user without the apiserver's etcd
	// client key (0600, in the 0700 state directory) cannot read or write the cluster's objects behind RBAC's back.
	client := url.URL{Scheme: "https", Host: "127.0.0.1:" + strconv.Itoa(clientPort)}
	peer := url.URL{Scheme: "https", Host: "127.0.0.1:" + strconv.Itoa(peerPort)}
	cfg := embed.NewConfig()
	tlsInfo := transport.TLSInfo{CertFile: cp.pki.EtcdCertFile, KeyFile: cp.pki.EtcdKeyFile, TrustedCAFile: cp.pki.EtcdCAFile, ClientCertAuth: true}
	cfg.ClientTLSInfo, cfg.PeerTLSInfo = tlsInfo, tlsInfo
	cfg.Name = "rollout-lab"
	cfg.Dir = filepath.Join(cp.Dir, "etcd")
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.ListenMetricsUrls = nil
	cfg.LogLevel = "warn"
	cfg.LogOutputs = []string{filepath.Join(cp.Dir, "etcd.log")}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return "", fmt.Errorf("start etcd: %w", err)
	}
	cp.etcd = e
	cp.EtcdURL = client.String()
	select {
	case <-e.Server.ReadyNotify():
		return client.String(), nil
	case err := <-e.Err():
		return "", fmt.Errorf("etcd: %w", err)
	case <-time.After(30 * time.Second):
		return "", errors.New("etcd did not become ready in 30 s")
	}
}

// componentRegistry gives a component its own feature gates and version, as upstream test servers do, so a
// second start in the same process does not find the first one's.
func componentRegistry() (basecompatibility.ComponentGlobalsRegistry, error) {
	featureGate := utilfeature.DefaultMutableFeatureGate.DeepCopy()
	effectiveVersion := utilcompatibility.DefaultBuildEffectiveVersion()
	registry := basecompatibility.NewComponentGlobalsRegistry()
	if err := registry.Register(basecompatibility.DefaultKubeComponent, effectiveVersion, featureGate); err != nil {
		return nil, err
	}
	return registry, nil
}

func parseFlags(sets map[string]*pflag.FlagSet, args []string) error {
	fs := pflag.NewFlagSet("component", pflag.ContinueOnError)
	for _, set := range sets {
		fs.AddFlagSet(set)
	}
	return fs.Parse(args)
}

func (cp *ControlPlane) run(ctx context.Context, name string, run func() error) {
	done := make(chan error, 1)
	cp.done = append(cp.done, done)
	go func() {
		err := run()
		if err != nil && ctx.Err() == nil {
			cp.logger.Error("lab component stopped", "component", name, "err", err)
		}
		done <- err
	}()
}

func (cp *ControlPlane) startAPIServer(ctx context.Context, etcdURL string) error {
	registry, err := componentRegistry()
	if err != nil {
		return err
	}
	s := apiserveroptions.NewServerRunOptions()
	s.GenericServerRunOptions.ComponentGlobalsRegistry = registry
	ln, err := cp.listenAPIServer()
	if err != nil {
		return err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	s.SecureServing.Listener, s.SecureServing.BindPort = ln, port
	p := cp.pki
	args := []string{
		"--etcd-servers=" + etcdURL,
		"--etcd-cafile=" + p.EtcdCAFile, "--etcd-certfile=" + p.APIServerEtcdCertFile, "--etcd-keyfile=" + p.APIServerEtcdKeyFile,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(port),
		"--endpoint-reconciler-type=none",
		"--kubelet-preferred-address-types=InternalIP",
		"--tls-cert-file=" + p.ServingCertFile, "--tls-private-key-file=" + p.ServingKeyFile,
		"--client-ca-file=" + p.CAFile,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + p.ServiceAccountKey, "--service-account-signing-key-file=" + p.ServiceAccountKey,
		"--service-cluster-ip-range=" + ServiceClusterIPRange,
		"--authorization-mode=RBAC",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		"--cert-dir=" + filepath.Join(cp.Dir, "pki"),
	}
	if err := parseFlags(s.Flags().FlagSets, args); err != nil {
		ln.Close()
		return fmt.Errorf("apiserver flags: %w", err)
	}
	if err := registry.Set(); err != nil {
		ln.Close()
		return err
	}
	completed, err := s.Complete(ctx)
	if err != nil {
		ln.Close()
		return fmt.Errorf("apiserver options: %w", err)
	}
	if errs := completed.Validate(); len(errs) > 0 {
		ln.Close()
		return fmt.Errorf("apiserver options: %w", utilerrors.NewAggregate(errs))
	}
	config, err := apiserverapp.NewConfig(completed)
	if err != nil {
		ln.Close()
		return fmt.Errorf("apiserver config: %w", err)
	}
	completedConfig, err := config.Complete()
	if err != nil {
		ln.Close()
		return fmt.Errorf("apiserver config: %w", err)
	}
	server, err := apiserverapp.CreateServerChain(completedConfig)
	if err != nil {
		ln.Close()
		return fmt.Errorf("apiserver: %w", err)
	}
	prepared, err := server.PrepareRun()
	if err != nil {
		ln.Close()
		return fmt.Errorf("apiserver: %w", err)
	}
	cp.Server = fmt.Sprintf("https://127.0.0.1:%d", port)
	if cp.opts.NodeNetworkIP != nil {
		cp.NodeServer = "https://" + net.JoinHostPort(cp.opts.NodeNetworkIP.String(), strconv.Itoa(port))
	}
	cp.run(ctx, "kube-apiserver", func() error { return prepared.Run(ctx) })
	return nil
}

func (cp *ControlPlane) writeKubeconfig() error {
	p := cp.pki
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["rollout-lab"] = &clientcmdapi.Cluster{Server: cp.Server, CertificateAuthorityData: p.caPEM}
	cfg.AuthInfos["rollout-lab-admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: p.adminCertPEM, ClientKeyData: p.adminKeyPEM}
	cfg.Contexts["rollout-lab"] = &clientcmdapi.Context{Cluster: "rollout-lab", AuthInfo: "rollout-lab-admin", Namespace: "default"}
	cfg.CurrentContext = "rollout-lab"
	cp.Kubeconfig = filepath.Join(cp.Dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, cp.Kubeconfig); err != nil {
		return err
	}
	// It holds the admin's key.
	if err := os.Chmod(cp.Kubeconfig, 0o600); err != nil {
		return err
	}
	restConfig, err := clientcmd.BuildConfigFromFlags("", cp.Kubeconfig)
	if err != nil {
		return err
	}
	restConfig.QPS, restConfig.Burst = 200, 400
	cp.Config = restConfig
	cp.Client, err = kubernetes.NewForConfig(restConfig)
	return err
}

// forgetNodesOfAnotherNetwork deletes Nodes a previous lab in the same directory registered with Pod CIDRs outside
// this lab's cluster CIDR (each lab takes a free address block): the node IPAM controller refuses to start with
// them, and the node agent registers its Nodes afresh.
func (cp *ControlPlane) forgetNodesOfAnotherNetwork(ctx context.Context) error {
	if cp.opts.ClusterCIDR == "" {
		return nil
	}
	_, cluster, err := net.ParseCIDR(cp.opts.ClusterCIDR)
	if err != nil {
		return fmt.Errorf("cluster CIDR: %w", err)
	}
	nodes, err := cp.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, n := range nodes.Items {
		ip, _, err := net.ParseCIDR(n.Spec.PodCIDR)
		if n.Spec.PodCIDR == "" || (err == nil && cluster.Contains(ip)) {
			continue
		}
		if err := cp.Client.CoreV1().Nodes().Delete(ctx, n.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
	}
	return nil
}

// listenAPIServer listens on a free loopback port and, with a node network, on the same port of the host's address
// there: one server, one set of certificates, reachable from the nodes' namespaces and nothing else of the host's.
func (cp *ControlPlane) listenAPIServer() (net.Listener, error) {
	for attempt := 0; ; attempt++ {
		loopback, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil || cp.opts.NodeNetworkIP == nil {
			return loopback, err
		}
		port := loopback.Addr().(*net.TCPAddr).Port
		node, err := net.Listen("tcp", net.JoinHostPort(cp.opts.NodeNetworkIP.String(), strconv.Itoa(port)))
		if err != nil {
			loopback.Close()
			if attempt < 10 {
				continue
			}
			return nil, fmt.Errorf("apiserver on the node network: %w", err)
		}
		return newMultiListener(loopback, node), nil
	}
}

// writeKubeProxyKubeconfig writes the nodes' kube-proxy kubeconfig (0600: it holds a key).
func (cp *ControlPlane) writeKubeProxyKubeconfig() error {
	certPEM, keyPEM, err := cp.pki.issueClient("kube-proxy", pkix.Name{CommonName: "system:kube-proxy"})
	if err != nil {
		return err
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["rollout-lab"] = &clientcmdapi.Cluster{Server: cp.NodeServer, CertificateAuthorityData: cp.pki.caPEM}
	cfg.AuthInfos["kube-proxy"] = &clientcmdapi.AuthInfo{ClientCertificateData: certPEM, ClientKeyData: keyPEM}
	cfg.Contexts["rollout-lab"] = &clientcmdapi.Context{Cluster: "rollout-lab", AuthInfo: "kube-proxy"}
	cfg.CurrentContext = "rollout-lab"
	cp.KubeProxyKubeconfig = filepath.Join(cp.Dir, "kube-proxy.kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, cp.KubeProxyKubeconfig); err != nil {
		return err
	}
	return os.Chmod(cp.KubeProxyKubeconfig, 0o600)
}

func (cp *ControlPlane) waitHealthy(ctx context.Context) error {
	return wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		for _, done := range cp.done {
			select {
			case err := <-done:
				return false, fmt.Errorf("apiserver exited: %v", err)
			default:
			}
		}
		status := 0
		cp.Client.CoreV1().RESTClient().Get().AbsPath("/readyz").Do(ctx).StatusCode(&status)
		return status == 200, nil
	})
}

func (cp *ControlPlane) startControllerManager(ctx context.Context) error {
	registry, err := componentRegistry()
	if err != nil {
		return err
	}
	s, err := kcmoptions.NewKubeControllerManagerOptions()
	if err != nil {
		return err
	}
	s.ComponentGlobalsRegistry = registry
	all, disabled, aliases := kcmapp.KnownControllers(), kcmapp.ControllersDisabledByDefault(), kcmapp.ControllerAliases()
	sets := s.Flags(all, disabled, aliases)
	controllers := ""
	for i, c := range Controllers {
		if i > 0 {
			controllers += ","
		}
		controllers += c
	}
	args := []string{
		"--kubeconfig=" + cp.Kubeconfig, "--leader-elect=false", "--secure-port=0",
		"--service-account-private-key-file=" + cp.pki.ServiceAccountKey, "--root-ca-file=" + cp.pki.CAFile,
	}
	if cp.opts.ClusterCIDR != "" {
		controllers += ",node-ipam-controller"
		args = append(args, "--allocate-node-cidrs=true", "--cluster-cidr="+cp.opts.ClusterCIDR,
			"--service-cluster-ip-range="+ServiceClusterIPRange, fmt.Sprintf("--node-cidr-mask-size=%d", cp.opts.NodeCIDRMaskSize))
	}
	args = append(args, "--controllers="+controllers)
	if err := parseFlags(sets.FlagSets, args); err != nil {
		return fmt.Errorf("controller-manager flags: %w", err)
	}
	s.ParsedFlags = &sets
	if err := registry.Set(); err != nil {
		return err
	}
	config, err := s.Config(ctx, all, disabled, aliases)
	if err != nil {
		return fmt.Errorf("controller-manager config: %w", err)
	}
	cp.run(ctx, "kube-controller-manager", func() error { return kcmapp.Run(ctx, config.Complete()) })
	return nil
}

func (cp *ControlPlane) startScheduler(ctx context.Context) error {
	registry, err := componentRegistry()
	if err != nil {
		return err
	}
	opts := scheduleroptions.NewOptions()
	opts.ComponentGlobalsRegistry = registry
	if err := parseFlags(opts.Flags.FlagSets, []string{"--kubeconfig=" + cp.Kubeconfig, "--leader-elect=false", "--secure-port=0"}); err != nil {
		return fmt.Errorf("scheduler flags: %w", err)
	}
	if err := registry.Set(); err != nil {
		return err
	}
	cc, sched, err := schedulerapp.Setup(ctx, opts)
	if err != nil {
		return fmt.Errorf("scheduler: %w", err)
	}
	cp.run(ctx, "kube-scheduler", func() error { return schedulerapp.Run(ctx, cc, sched) })
	return nil
}

// Stop stops the components and etcd and waits for them; stopping twice is harmless.
func (cp *ControlPlane) Stop() error {
	cp.stopOnce.Do(func() {
		var errs []error
		if cp.cancel != nil {
			cp.cancel()
		}
		for _, done := range cp.done {
			// What a component returns once its context is cancelled is its way of stopping (the controller-manager
			// says "finished without leader elect"), not a failure.
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				errs = append(errs, errors.New("a lab component did not stop in 30 s"))
			}
		}
		if cp.etcd != nil {
			cp.etcd.Close()
		}
		// The components register their configuration process-wide; the next lab registers it again.
		configz.Delete(kcmapp.ConfigzName)
		configz.Delete("componentconfig")
		if cp.klogFile != nil {
			klog.Flush()
			klog.SetOutput(os.Stderr)
			errs = append(errs, cp.klogFile.Close())
		}
		cp.stopErr = errors.Join(errs...)
		running.Unlock()
	})
	return cp.stopErr
}
