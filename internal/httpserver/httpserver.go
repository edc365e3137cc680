// Package httpserver runs txpipe's HTTP servers with a clean shutdown, and
// builds the admin handler every process serves: /metrics, /healthz, /readyz.
package httpserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Run serves srv on ln until ctx is done, then shuts it down, giving
// in-flight requests up to grace to finish. It returns nil after a clean
// shutdown and the serve or shutdown error otherwise.
func Run(ctx context.Context, srv *http.Server, ln net.Listener, grace time.Duration) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), grace)
	defer cancel()
	err := srv.Shutdown(sctx)
	if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("shut down %s: %w", ln.Addr(), err)
	}
	return nil
}

// Check is one readiness condition, e.g. "postgres" or "kafka". Fn returns
// nil when the dependency is usable; its error is shown to operators.
type Check struct {
	Name string
	Fn   func(ctx context.Context) error
	// Detail, when set, says more about the dependency whatever its state
	// (which PostgreSQL node is the primary); /readyz shows it under
	// "details".
	Detail func() string
	// Optional, when set and true at the time of asking, leaves the
	// process ready whatever the check says (shown all the same): an
	// ingest through a gap in PostgreSQL still accepts commands into Kafka.
	Optional func() bool
}

func (c Check) optional() bool { return c.Optional != nil && c.Optional() }

// AdminHandler serves the Prometheus metrics of g on /metrics, liveness on
// /healthz (the process answers), readiness on /readyz (every check passes
// within a second; the body says which failed and why), and Go profiles on
// /debug/pprof/.
//
// With status set, /status serves the status page too.
func AdminHandler(g prometheus.Gatherer, checks []Check, status *Status) http.Handler {
	mux := http.NewServeMux()
	if status != nil {
		status.checks = checks
		mux.Handle("GET /status", status)
	}
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{EnableOpenMetrics: true}))
	// Profiles, for diagnosing a slow or stuck process; the admin address
	// must not be exposed beyond operators.
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		results := runChecks(r.Context(), checks)
		status, code := "ready", http.StatusOK
		for _, c := range checks {
			if results[c.Name] != "ok" && !c.optional() {
				status, code = "not ready", http.StatusServiceUnavailable
			}
		}
		body := map[string]any{"status": status, "checks": results}
		details := map[string]string{}
		for _, c := range checks {
			if c.Detail != nil {
				details[c.Name] = c.Detail()
			}
		}
		if len(details) > 0 {
			body["details"] = details
		}
		writeJSON(w, code, body)
	})
	return mux
}

func runChecks(ctx context.Context, checks []Check) map[string]string {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	results := make(map[string]string, len(checks))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, c := range checks {
		wg.Go(func() {
			msg := "ok"
			if err := c.Fn(ctx); err != nil {
				msg = err.Error()
			}
			mu.Lock()
			results[c.Name] = msg
			mu.Unlock()
		})
	}
	wg.Wait()
	return results
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v) // the client went away; nothing to do
}
