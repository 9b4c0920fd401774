package calibrate

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// A load URL is checked before anything is installed, and the error never shows its password.
func TestLoadURLsAreCheckedForTheirService(t *testing.T) {
	for _, tc := range []struct {
		url     string
		typ     corev1.ServiceType
		wantErr string
	}{
		{url: "http://203.0.113.10", typ: corev1.ServiceTypeLoadBalancer},
		{url: "https://calibrate.example.com/", typ: corev1.ServiceTypeClusterIP},
		{url: "http://10.0.0.5:30080", typ: corev1.ServiceTypeNodePort},
		{url: "http://10.0.0.5", typ: corev1.ServiceTypeNodePort, wantErr: "takes its nodePort from the URL, which names none"},
		{url: "http://10.0.0.5:80", typ: "ExternalName", wantErr: `load Service type "ExternalName": want LoadBalancer, NodePort or ClusterIP`},
		{url: "ftp://203.0.113.10", typ: corev1.ServiceTypeLoadBalancer, wantErr: "want http(s)://host[:port] with no path"},
		{url: "http://203.0.113.10/say", typ: corev1.ServiceTypeLoadBalancer, wantErr: "want http(s)://host[:port] with no path"},
		{url: "http://user:s3cret@203.0.113.10/say", typ: corev1.ServiceTypeLoadBalancer, wantErr: `"http://user:xxxxx@203.0.113.10/say"`},
		{url: "203.0.113.10", typ: corev1.ServiceTypeLoadBalancer, wantErr: "want http(s)://host[:port]"},
	} {
		u, err := ParseLoadURL(tc.url, tc.typ)
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("%s (%s): %v", tc.url, tc.typ, err)
		case tc.wantErr == "" && u.String() != tc.url:
			t.Errorf("%s (%s): parsed as %s", tc.url, tc.typ, u)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%s (%s): error %v, want %q", tc.url, tc.typ, err, tc.wantErr)
		case err != nil && strings.Contains(err.Error(), "s3cret"):
			t.Errorf("the error shows the password: %v", err)
		}
	}
}
