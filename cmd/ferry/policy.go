package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"

	"github.com/ferrymesh/ferry/authz"
	"github.com/ferrymesh/ferry/certs"
	"github.com/ferrymesh/ferry/node"
	"github.com/ferrymesh/ferry/node/inventory"
)

// errDenied makes `ferry policy check` exit 1 on a denial without printing an error.
var errDenied = fmt.Errorf("%w: denied", errUsage)

func runPolicy(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "check" {
		fmt.Fprintln(stderr, "usage: ferry policy check --manifests PATH --from ID|none --from-ip IP (--to-pod NS/NAME | --to IP) --port N [-o text|json]")
		return errUsage
	}
	fs := newFlagSet("policy check", stderr)
	manifests := fs.String("manifests", "", "file or directory of manifests (as the agent's --manifests)")
	from := fs.String("from", "", "client identity: spiffe://TD/ns/NS/sa/SA, or none for a plaintext client")
	fromIP := fs.String("from-ip", "", "client IP address")
	toPod := fs.String("to-pod", "", "destination pod, NAMESPACE/NAME")
	to := fs.String("to", "", "destination IP address (instead of --to-pod)")
	port := fs.Uint("port", 0, "destination port")
	output := fs.String("o", "text", "output: text or json")
	trustDomain := fs.String("trust-domain", certs.DefaultTrustDomain, "the mesh's trust domain")
	root := fs.String("system-namespace", "istio-system", "root namespace (mesh-wide policies)")
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	if *manifests == "" || *from == "" || *port == 0 || *port > 65535 {
		return errors.New("policy check: --manifests, --from and --port (1-65535) are required")
	}
	q := node.CheckRequest{From: *from, ToPod: *toPod, Port: uint16(*port)}
	var err error
	if q.FromIP, err = netip.ParseAddr(*fromIP); err != nil {
		return fmt.Errorf("policy check: --from-ip %q: want an IP address", *fromIP)
	}
	if *to != "" {
		if q.To, err = netip.ParseAddr(*to); err != nil {
			return fmt.Errorf("policy check: --to %q: want an IP address", *to)
		}
	}
	snap, err := inventory.Load(*manifests)
	if err != nil {
		return err
	}
	res, err := node.Check(snap, q, *trustDomain, *root)
	if err != nil {
		return fmt.Errorf("policy check: %w", err)
	}
	switch *output {
	case "json":
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(res); err != nil {
			return err
		}
	case "text":
		verdict := "ALLOW"
		if !res.Decision.Allow {
			verdict = "DENY"
		}
		fmt.Fprintf(stdout, "%s  %s (%s) -> %s (%s)\n", verdict, res.Source, res.SourceIP, res.Destination, res.Address)
		by := "the default (no policy decided)"
		switch {
		case res.Decision.Policy != "":
			by = res.Decision.Kind + " " + res.Decision.Policy
		case !res.Decision.Allow:
			by = "the default deny of workloads that ALLOW policies select"
		}

		fmt.Fprintf(stdout, "  decided by: %s\n  reason:     %s\n", by, res.Decision.Reason)
		considered(stdout, res)
		if !res.Enrolled {
			fmt.Fprintf(stdout, "  note:       %s is not enrolled in the mesh: its node's agent does not enforce policy for it\n", res.Destination)
		}
		for _, d := range res.Diagnostics {
			fmt.Fprintf(stdout, "  problem:    %s\n", d.Error())
		}
		for _, e := range snap.Errors {
			if _, ok := errors.AsType[authz.Diagnostic](e); !ok { // those are listed above
				fmt.Fprintf(stdout, "  problem:    %s\n", e)
			}
		}
	default:
		return fmt.Errorf("policy check: -o %q: want text or json", *output)
	}
	if !res.Decision.Allow {
		return errDenied
	}
	return nil
}

// considered prints how each AuthorizationPolicy selecting the workload judged the request.
func considered(w io.Writer, res node.CheckResult) {
	for _, p := range res.Explanation.Policies {
		verdict := "no rule matched"
		switch {
		case p.Matched && p.Rule < 0:
			verdict = "matched: it has errors, so it denies everything it selects"
		case p.Matched:
			verdict = fmt.Sprintf("rules[%d] matched", p.Rule)
		}
		fmt.Fprintf(w, "  considered: %s %s (%s scope, %d L4 rules): %s\n", p.Action, p.Policy, p.Scope, p.Rules, verdict)
	}
}
