package node

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
)

// Readiness tasks: the node is ready to carry traffic only when none is pending.
const (
	TaskInventory    = "inventory sync"
	TaskRedirection  = "redirection (BPF and routing)"
	TaskCertificates = "workload certificates"
	TaskListeners    = "proxy listeners"
	TaskCNI          = "ferry-cni plugin installed"
)

// readiness tracks what the agent still waits for before it can carry traffic.
// Its zero value has nothing pending; it is safe for concurrent use.
type readiness struct {
	mu      sync.Mutex
	pending map[string]string // task → detail
}

func newReadiness(tasks ...string) *readiness {
	r := &readiness{pending: map[string]string{}}
	for _, t := range tasks {
		r.pending[t] = ""
	}
	return r
}

// set marks task pending with a detail, or done when detail is "" and done is true.
func (r *readiness) set(task string, done bool, detail string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if done {
		delete(r.pending, task)
	} else {
		r.pending[task] = detail
	}
}

// Pending lists pending tasks, sorted, each with its detail if any.
func (r *readiness) Pending() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for t, d := range r.pending {
		if d != "" {
			t += " (" + d + ")"
		}
		out = append(out, t)
	}
	slices.Sort(out)
	return out
}

// ServeHTTP answers /healthz/ready: 200 "ready", or 503 naming what is pending.
func (r *readiness) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if p := r.Pending(); len(p) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "not ready, pending: %s\n", strings.Join(p, ", "))
		return
	}
	fmt.Fprintln(w, "ready")
}
