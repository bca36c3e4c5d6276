//go:build linux

package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
)

// linkPinName is the name of the pinned sk_lookup netns link in the pin
// directory. Maps are pinned under their own (ferry_*) names.
const linkPinName = "ferry_sk_lookup_link"

// Objects is Ferry's loaded redirect program and its maps. SetListener(s),
// Pods and Counters are safe for concurrent use; SetPods is too, but two
// concurrent SetPods calls may interleave (one writer should own the pod
// set); AttachNetNS and Close must not run concurrently with other methods.
//
// Close releases the process's handles but leaves the pins, so capture (and
// the fail-closed behaviour when the agent is gone) survives a restart.
// Remove is the only way to undo it.
type Objects struct {
	objs   redirectObjects
	pinDir string
	link   link.Link // nil until AttachNetNS
}

// Load loads the redirect program and its maps. Maps are pinned under the
// pin directory; when pins from an earlier run exist and are compatible they
// are reused (so the pod set and counters survive a restart, and a running
// program keeps seeing the same maps); incompatible pins (an older layout) are
// replaced. The program is not attached: call AttachNetNS.
//
// A verifier rejection is reported in full by formatting the error with %+v.
func Load(cfg Config) (*Objects, error) {
	if cfg.PinDir == "" {
		cfg.PinDir = DefaultPinDir
	}
	if cfg.HBONEPort == 0 {
		cfg.HBONEPort = DefaultHBONEPort
	}
	// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; later ones
	// make this a no-op.
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("bpf: remove memlock rlimit: %w", err)
	}
	if err := ensureBPFFS(cfg.PinDir); err != nil {
		return nil, err
	}
	spec, err := loadRedirect()
	if err != nil {
		return nil, fmt.Errorf("bpf: %w", err)
	}
	if err := spec.Variables[redirectVarFerryHbonePort].Set(uint32(cfg.HBONEPort)); err != nil {
		return nil, fmt.Errorf("bpf: set hbone port: %w", err)
	}
	o := &Objects{pinDir: cfg.PinDir}
	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: cfg.PinDir}}
	err = spec.LoadAndAssign(&o.objs, opts)
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		// Pins from another version of the program: start over with fresh
		// maps. The agent repopulates them; a program still attached from
		// the old run keeps its own maps until AttachNetNS replaces it.
		if rmErr := removeMapPins(cfg.PinDir); rmErr != nil {
			return nil, fmt.Errorf("bpf: replace incompatible pins: %w", rmErr)
		}
		err = spec.LoadAndAssign(&o.objs, opts)
	}
	if err != nil {
		return nil, &loadError{op: "load redirect", err: err}
	}
	return o, nil
}

// PinDir returns the directory holding o's pins.
func (o *Objects) PinDir() string { return o.pinDir }

// Close releases o's file descriptors. Pinned objects stay: an attached
// program keeps capturing (connections from and to enrolled pods are refused
// while no listener is registered) until Remove.
func (o *Objects) Close() error {
	var errs []error
	if o.link != nil {
		errs = append(errs, o.link.Close())
		o.link = nil
	}
	errs = append(errs, o.objs.Close())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("bpf: close: %w", err)
	}
	return nil
}

// Remove detaches the programs pinned under pinDir from their network
// namespaces (the node's, and each pod's with --capture pod) and deletes
// every Ferry pin there, then the directory itself. "" means
// DefaultPinDir. It is idempotent: nothing to remove is not an error. It does
// not unmount the BPF filesystem.
//
// Remove detaches even while an agent still holds the link open; that agent's
// capture stops.
func Remove(pinDir string) error {
	if pinDir == "" {
		pinDir = DefaultPinDir
	}
	var errs []error
	links, err := filepath.Glob(filepath.Join(pinDir, "ferry_*_link"))
	errs = append(errs, err)
	for _, pin := range links { // the node's link and the pods' (--capture pod)
		errs = append(errs, detachPinned(pin))
	}
	errs = append(errs, removeMapPins(pinDir))
	if err := os.Remove(pinDir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("bpf: remove %s: %w", pinDir, err)
	}
	return nil
}

// removeMapPins deletes the pinned maps (every ferry_* entry but the links)
// in dir.
func removeMapPins(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "ferry_") || strings.HasSuffix(e.Name(), "_link") {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// loadError wraps a load failure. %v gives one line; %+v adds the full
// verifier log when the verifier rejected the program.
type loadError struct {
	op  string
	err error
}

func (e *loadError) Error() string { return "bpf: " + e.op + ": " + e.err.Error() }
func (e *loadError) Unwrap() error { return e.err }

func (e *loadError) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('+') {
		fmt.Fprintf(f, "bpf: %s: %+v", e.op, e.err)
		return
	}
	fmt.Fprint(f, e.Error())
}
