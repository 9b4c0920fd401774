package kubeproxy

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	kubeproxyconfig "k8s.io/kube-proxy/config/v1alpha1"
	"sigs.k8s.io/yaml"

	"github.com/rollout-lab/rollout-lab/internal/wellknown"
)

// kubeadmKubeconfig is where kubeadm's kube-proxy DaemonSet mounts its kubeconfig (the ConfigMap's kubeconfig.conf).
const kubeadmKubeconfig = "/var/lib/kube-proxy/kubeconfig.conf"

// Publish writes the cluster's kube-proxy configuration where kubeadm does (ConfigMap kube-system/kube-proxy, key
// config.conf), so that whoever asks the lab's API how its kube-proxies are configured (runner calibrate, kubectl)
// reads what they run with.
func Publish(ctx context.Context, client kubernetes.Interface, c Config, clusterCIDR string) error {
	conf, err := Configuration(c, clusterCIDR, kubeadmKubeconfig, "")
	if err != nil {
		return err
	}
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Namespace: wellknown.KubeProxyConfigMapNamespace, Name: wellknown.KubeProxyConfigMapName,
			Labels: map[string]string{"app": "kube-proxy"}},
		Data: map[string]string{wellknown.KubeProxyConfigMapKey: string(conf)},
	}
	configMaps := client.CoreV1().ConfigMaps(cm.Namespace)
	_, err = configMaps.Create(ctx, cm, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		_, err = configMaps.Update(ctx, cm, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("publish kube-proxy's configuration in ConfigMap %s/%s: %w", cm.Namespace, cm.Name, err)
	}
	return nil
}

// Defaulted is what kube-proxy v1.37 runs with for what a KubeProxyConfiguration leaves out on Linux
// (pkg/proxy/apis/config/v1alpha1/defaults.go, and mode "" is iptables).
var Defaulted = Config{Mode: ModeIPTables, MinSyncPeriod: time.Second, SyncPeriod: 30 * time.Second}

// Found is a cluster's kube-proxy configuration as read, and what was defaulted because the file left it out.
type Found struct {
	Config
	// Defaulted names the fields the configuration left out (kube-proxy's defaults were taken for them).
	Defaulted []string
}

// ParseConfiguration reads a KubeProxyConfiguration (the ConfigMap's config.conf) for the mode and the sync
// periods of that mode; what it leaves out takes kube-proxy's defaults, and says so. A minSyncPeriod of 0 is read
// as written: what it means depends on the kube-proxy reading it (ZeroMinSyncPeriod).
func ParseConfiguration(data []byte) (Found, error) {
	var cfg kubeproxyconfig.KubeProxyConfiguration
	if err := yaml.Unmarshal(data, &cfg); err != nil {
		return Found{}, fmt.Errorf("not a KubeProxyConfiguration: %w", err)
	}
	if cfg.Kind != "" && cfg.Kind != "KubeProxyConfiguration" {
		return Found{}, fmt.Errorf("kind %q, want KubeProxyConfiguration", cfg.Kind)
	}
	f := Found{Config: Config{Mode: string(cfg.Mode)}}
	if f.Mode == "" {
		f.Mode = Defaulted.Mode
		f.Defaulted = append(f.Defaulted, "mode")
	}
	periods := cfg.IPTables
	if f.Mode == ModeNFTables {
		periods = kubeproxyconfig.KubeProxyIPTablesConfiguration{MinSyncPeriod: cfg.NFTables.MinSyncPeriod, SyncPeriod: cfg.NFTables.SyncPeriod}
	}
	// A ConfigMap written by kubeadm holds every field, zeros included ("minSyncPeriod: 0s" is the 1.18 default);
	// one written by hand may leave them out, which reads the same: kube-proxy defaults a zero sync period, and
	// a zero minSyncPeriod only when the field is absent, which the typed struct cannot tell from 0s.
	f.MinSyncPeriod = periods.MinSyncPeriod.Duration
	if !hasField(data, f.Mode, "minSyncPeriod") {
		f.MinSyncPeriod = Defaulted.MinSyncPeriod
		f.Defaulted = append(f.Defaulted, "minSyncPeriod")
	}
	f.SyncPeriod = periods.SyncPeriod.Duration
	if f.SyncPeriod == 0 {
		f.SyncPeriod = Defaulted.SyncPeriod
		f.Defaulted = append(f.Defaulted, "syncPeriod")
	}
	return f, nil
}

// ZeroMinSyncPeriod is what a minSyncPeriod of 0 in a KubeProxyConfiguration means to kube-proxy of version
// (v1.18.9, 1.29.3-gke.100 …): no minimum up to 1.18, 1 s from 1.19 on (kubernetes/kubernetes#92836). ok is false
// when the version cannot be read.
func ZeroMinSyncPeriod(version string) (d time.Duration, ok bool) {
	v := strings.TrimPrefix(version, "v")
	major, rest, found := strings.Cut(v, ".")
	if !found || major != "1" {
		return 0, false
	}
	minorText, _, _ := strings.Cut(rest, ".")
	minor, err := strconv.Atoi(minorText)
	if err != nil {
		return 0, false
	}
	if minor <= 18 {
		return 0, true
	}
	return time.Second, true
}

// hasField tells whether the configuration's section for mode (iptables or nftables) sets field.
func hasField(data []byte, mode, field string) bool {
	var raw map[string]any
	if yaml.Unmarshal(data, &raw) != nil {
		return false
	}
	section, _ := raw[mode].(map[string]any)
	_, ok := section[field]
	return ok
}
