package node

import (
	"context"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ferrymesh/ferry/node/inventory"
)

// checkNoGoroutinesLeft fails t if a goroutine started during t outlives it.
// Called first, its check runs after t's other cleanups, the agent's stop
// among them.
func checkNoGoroutinesLeft(t *testing.T) {
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, before) })
}

// TestAgentRunWaitsForItsGoroutines: when Run returns, every goroutine it
// started has exited, the drain's included, whether it stopped cleanly
// after draining an open connection or failed.
func TestAgentRunWaitsForItsGoroutines(t *testing.T) {
	t.Run("drain", func(t *testing.T) {
		checkNoGoroutinesLeft(t)
		h := startAgent(t, baseManifests)
		c, _ := h.echoConn(t)
		// The connection stays open: the drain sends GOAWAY, waits out
		// the 2 s DrainTimeout, and Run cuts it.
		h.stop()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadAll(c); err != nil && !isClosed(err) {
			t.Fatalf("connection not cut after the drain: %v", err)
		}
	})

	t.Run("failure", func(t *testing.T) {
		checkNoGoroutinesLeft(t)
		dir := t.TempDir()
		writeCAAndManifests(t, dir, baseManifests)
		snap, err := inventory.Load(filepath.Join(dir, "m"))
		if err != nil {
			t.Fatal(err)
		}
		// The inventory is lost once the agent is ready, as when the
		// API server goes away.
		errLost := errors.New("inventory lost")
		lose := make(chan struct{})
		src := sourceFunc(func(ctx context.Context, publish func(*inventory.Snapshot)) error {
			publish(snap)
			select {
			case <-lose:
				return errLost
			case <-ctx.Done():
				return nil
			}
		})
		port0 := "127.0.0.1:0"
		cfg := Config{
			NodeName: "a", Manifests: filepath.Join(dir, "m"),
			CACert: filepath.Join(dir, "ca", "root-cert.pem"), CAKey: filepath.Join(dir, "ca", "root-key.pem"),
			TrustDomain: "cluster.local", SystemNamespace: "istio-system", Redirect: RedirectNone,
			OutboundAddr: port0, InboundAddr: port0, HBONEAddr: port0, AdminAddr: port0, MetricsAddr: port0, ReadinessAddr: port0,
		}
		a, err := New(cfg, Deps{Log: logger(t), Source: src})
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- a.Run(context.Background()) }()
		waitAgentReady(t, a, done)
		close(lose)
		select {
		case err := <-done:
			if !errors.Is(err, errLost) {
				t.Fatalf("Run = %v, want %v", err, errLost)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("Run did not return after its inventory failed")
		}
		if err := a.Run(t.Context()); err == nil || !strings.Contains(err.Error(), "called twice") {
			t.Fatalf("second Run = %v, want an error", err)
		}
	})
}

// waitAgentReady waits until a is ready, or fails t if it is not within 20 s
// or its Run, which reports on done, returns first.
func waitAgentReady(t *testing.T, a *Agent, done <-chan error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for len(a.ready.Pending()) > 0 {
		select {
		case err := <-done:
			t.Fatalf("Run returned before the agent was ready: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent never ready: %v", a.ready.Pending())
		}
	}
}

// sourceFunc is an inventory.Source from a function.
type sourceFunc func(ctx context.Context, publish func(*inventory.Snapshot)) error

func (f sourceFunc) Run(ctx context.Context, publish func(*inventory.Snapshot)) error {
	return f(ctx, publish)
}
