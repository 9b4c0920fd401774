package embedprom

import (
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	promconfig "github.com/prometheus/common/config"
)

// NewClient is client_golang's API client for any Prometheus at url; token, when not empty, is sent as a bearer
// token (the embedded server requires its own).
func NewClient(url, token string) (promv1.API, error) {
	rt := http.RoundTripper(&http.Transport{Proxy: nil})
	if token != "" {
		rt = promconfig.NewAuthorizationCredentialsRoundTripper("Bearer", promconfig.NewInlineSecret(token), rt)
	}
	client, err := api.NewClient(api.Config{Address: url, RoundTripper: rt})
	if err != nil {
		return nil, fmt.Errorf("prometheus client for %s: %w", url, err)
	}
	return promv1.NewAPI(client), nil
}

// Client is an API client of this server.
func (s *Server) Client() (promv1.API, error) { return NewClient(s.URL(), s.token) }
