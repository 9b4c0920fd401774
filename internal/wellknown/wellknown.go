// Package wellknown holds the names that the lab's parts write and the analysis and check read: metric names and
// annotations, each defined once so that writer and reader cannot drift apart.
package wellknown

// Metric names of the CPU accounting: cAdvisor's for containers, the kubelet's resource metrics' for nodes,
// kube-state-metrics' for capacity and node_exporter's for the machine's CPU time and pressure, so dashboards and
// queries written for a cluster read the lab too.
const (
	MetricContainerCPUUsage         = "container_cpu_usage_seconds_total"
	MetricContainerCFSPeriods       = "container_cpu_cfs_periods_total"
	MetricContainerCFSThrottled     = "container_cpu_cfs_throttled_periods_total"
	MetricContainerCFSThrottledTime = "container_cpu_cfs_throttled_seconds_total"
	MetricNodeCPUUsage              = "node_cpu_usage_seconds_total"
	MetricNodeCFSPeriods            = "rolloutlab_lab_node_cpu_cfs_periods_total"
	MetricNodeCFSThrottled          = "rolloutlab_lab_node_cpu_cfs_throttled_periods_total"
	MetricNodeCapacity              = "kube_node_status_capacity"
	MetricMachineCPUPressureWaiting = "node_pressure_cpu_waiting_seconds_total"
	MetricMachineCPUSeconds         = "node_cpu_seconds_total"
)

// BackendProtocolAnnotation chooses a Service's load balancer mode, "TCP" or "HTTP", as on the reference
// experiment's cloud (oracle/oci-cloud-controller-manager: ServiceAnnotationLoadBalancerBEProtocol, default TCP);
// the lab's balancers read it, runner check sets it.
const BackendProtocolAnnotation = "service.beta.kubernetes.io/oci-load-balancer-backend-protocol"

// kube-proxy's configuration as kubeadm publishes it (cmd/kubeadm/app/phases/addons/proxy: the ConfigMap
// kube-system/kube-proxy, key config.conf, a KubeProxyConfiguration): the lab publishes its nodes' configuration
// there, runner calibrate reads a cluster's from it.
const (
	KubeProxyConfigMapNamespace = "kube-system"
	KubeProxyConfigMapName      = "kube-proxy"
	KubeProxyConfigMapKey       = "config.conf"
)

// kube-proxy's own metric of how long a change took to reach a node's rules (pkg/proxy/metrics).
const MetricKubeProxyProgramming = "kubeproxy_network_programming_duration_seconds"
