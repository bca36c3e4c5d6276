package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/ferrymesh/ferry/node"
)

// adminFlags are the flags every admin-reading command shares.
type adminFlags struct {
	addr, output, namespace, node string
}

func (f *adminFlags) register(fs interface {
	StringVar(*string, string, string, string)
}, filters bool) {
	fs.StringVar(&f.addr, "admin", "127.0.0.1:15000", "the agent's admin endpoint")
	fs.StringVar(&f.output, "o", "table", "output format: table, json or yaml")
	if filters {
		fs.StringVar(&f.namespace, "namespace", "", "only this namespace")
		fs.StringVar(&f.node, "node", "", "only this node")
	}
}

// get fetches path from the admin endpoint into v.
func (f *adminFlags) get(ctx context.Context, path string, v any) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+f.addr+path, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("admin endpoint %s: %w (is the agent running on this node? use --admin)", f.addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("admin endpoint %s%s: %s: %s", f.addr, path, resp.Status, strings.TrimSpace(string(b)))
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// print writes v as JSON or YAML, or calls table for the table format.
func (f *adminFlags) print(w io.Writer, v any, table func(*tabwriter.Writer)) error {
	switch f.output {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "yaml":
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	case "table", "":
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		table(tw)
		return tw.Flush()
	}
	return fmt.Errorf("-o %q: want table, json or yaml", f.output)
}

func adminCommand(name string, filters bool, args []string, stderr io.Writer) (*adminFlags, error) {
	var f adminFlags
	fs := newFlagSet(name, stderr)
	f.register(fs, filters)
	return &f, parse(fs, args)
}

func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f, err := adminCommand("status", false, args, stderr)
	if err != nil {
		return err
	}
	var d node.ConfigDump
	if err := f.get(ctx, node.FerryConfigDumpPath, &d); err != nil {
		return err
	}
	captured, refused := 0, 0
	for _, w := range d.Workloads {
		if w.Captured {
			captured++
		}
		if w.Local && len(w.Refused) > 0 {
			refused++
		}
	}
	summary := map[string]any{
		"node": d.Node, "version": d.Version, "ready": d.Ready, "pending": d.Pending,
		"redirect": d.Config.Redirect, "workloads": len(d.Workloads), "capturedPods": captured, "ipv6RefusedPods": refused,
		"identities": len(d.Certificates), "policies": len(d.Policies), "errors": d.Errors,
	}
	return f.print(stdout, summary, func(tw *tabwriter.Writer) {
		ready := "ready"
		if !d.Ready {
			ready = "NOT READY: " + strings.Join(d.Pending, ", ")
		}
		fmt.Fprintf(tw, "Node:\t%s\nVersion:\t%s\nReadiness:\t%s\nRedirect:\t%s\n", d.Node, d.Version, ready, d.Config.Redirect)
		fmt.Fprintf(tw, "Workloads:\t%d known, %d captured on this node\n", len(d.Workloads), captured)
		fmt.Fprintf(tw, "Identities:\t%d\nPolicies:\t%d\n", len(d.Certificates), len(d.Policies))
		// The two ways around capture an operator must know about (README: Limits).
		fmt.Fprintf(tw, "IPv6:\tnot carried: TCP refused (fail closed) for %d enrolled pods with IPv6 addresses\n", refused)
		fmt.Fprintf(tw, "From node:\tnot captured: the node's own connections (hostNetwork pods, node processes) reach enrolled pods here directly; restrict them with a host firewall or NetworkPolicy\n")
		for _, e := range d.Errors {
			fmt.Fprintf(tw, "Problem:\t%s\n", e)
		}
	})
}

func runWorkloads(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f, err := adminCommand("workloads", true, args, stderr)
	if err != nil {
		return err
	}
	var d node.ConfigDump
	if err := f.get(ctx, node.FerryConfigDumpPath, &d); err != nil {
		return err
	}
	var ws []node.WorkloadDump
	for _, w := range d.Workloads {
		if (f.namespace == "" || w.Namespace == f.namespace) && (f.node == "" || w.Node == f.node) {
			ws = append(ws, w)
		}
	}
	return f.print(stdout, ws, func(tw *tabwriter.Writer) {
		fmt.Fprintln(tw, "NAMESPACE\tPOD NAME\tADDRESS\tNODE\tPROTOCOL\tCAPTURED\tIDENTITY")
		for _, w := range ws {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%v\t%s\n", w.Namespace, w.Name, w.Address, w.Node, w.Protocol, w.Captured, w.Identity)
		}
		// Services, and who picked the endpoint of this node's connections
		// to their addresses: Ferry (it saw the address) or kube-proxy.
		var ss []node.ServiceDump
		for _, s := range d.Services {
			if f.namespace == "" || s.Namespace == f.namespace {
				ss = append(ss, s)
			}
		}
		if len(ss) == 0 {
			return
		}
		fmt.Fprintln(tw)
		fmt.Fprintln(tw, "NAMESPACE\tSERVICE NAME\tADDRESSES\tPORTS\tENDPOINTS\tWAYPOINT\tPICKED BY FERRY\tPICKED BY KUBE-PROXY")
		for _, s := range ss {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%d\t%d\n", s.Namespace, s.Name, strings.Join(s.Addresses, ","),
				strings.Join(s.Ports, ","), s.Endpoints, cmp.Or(s.Waypoint, "-"), s.PickedByFerry, s.PickedByKubeProxy)
		}
	})
}

func runPolicies(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f, err := adminCommand("policies", true, args, stderr)
	if err != nil {
		return err
	}
	var d node.ConfigDump
	if err := f.get(ctx, node.FerryConfigDumpPath, &d); err != nil {
		return err
	}
	var ps []node.PolicyDump
	for _, p := range d.Policies {
		if f.namespace == "" || p.Namespace == f.namespace {
			ps = append(ps, p)
		}
	}
	return f.print(stdout, ps, func(tw *tabwriter.Writer) {
		fmt.Fprintln(tw, "NAMESPACE\tPOLICY NAME\tKIND\tACTION\tSCOPE\tPROBLEMS")
		for _, p := range ps {
			problems := strings.Join(p.Warnings, "; ")
			if len(p.Errors) > 0 {
				problems = "ERROR: " + strings.Join(p.Errors, "; ") + " (enforced meanwhile: " + p.Enforced + ")"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", p.Namespace, p.Name, p.Kind, p.Action, p.Scope, problems)
		}
	})
}

func runCerts(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f, err := adminCommand("certs", false, args, stderr)
	if err != nil {
		return err
	}
	var d node.ConfigDump
	if err := f.get(ctx, node.FerryConfigDumpPath, &d); err != nil {
		return err
	}
	return f.print(stdout, d.Certificates, func(tw *tabwriter.Writer) {
		fmt.Fprintln(tw, "IDENTITY\tSTATE\tSERIAL NUMBER\tNOT BEFORE\tNOT AFTER\tERROR")
		for _, c := range d.Certificates {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", c.Identity, c.State, c.Serial, fmtTime(c.NotBefore), fmtTime(c.NotAfter), c.Error)
		}
	})
}

func runConnections(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f, err := adminCommand("connections", true, args, stderr)
	if err != nil {
		return err
	}
	var all, cs []node.ConnectionDump
	if err := f.get(ctx, "/connections", &all); err != nil {
		return err
	}
	if f.node != "" {
		return fmt.Errorf("connections: --node does not apply: connections are this agent's own")
	}
	for _, c := range all {
		if f.namespace == "" || c.SourceNS == f.namespace || c.DestNS == f.namespace {
			cs = append(cs, c)
		}
	}
	return f.print(stdout, cs, func(tw *tabwriter.Writer) {
		fmt.Fprintln(tw, "DIRECTION\tSOURCE\tDESTINATION\tPROTOCOL\tSOURCE IDENTITY\tDESTINATION IDENTITY\tSENT\tRECEIVED\tAGE")
		for _, c := range cs {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", c.Direction, c.Source, c.Destination, c.Protocol,
				c.SourceID, c.DestID, c.BytesSent, c.BytesRecv, time.Since(c.Started).Round(time.Second))
		}
	})
}

func runLog(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("log", stderr)
	addr := fs.String("admin", "127.0.0.1:15000", "the agent's admin endpoint")
	if err := fs.Parse(args); err != nil {
		return err
	}
	method, path := http.MethodGet, "/logging"
	switch fs.NArg() {
	case 0:
	case 1:
		method, path = http.MethodPost, "/logging?level="+url.QueryEscape(fs.Arg(0))
	default:
		return fmt.Errorf("log: want at most one LEVEL argument")
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, "http://"+*addr+path, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("admin endpoint %s: %w", *addr, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s", strings.TrimSpace(string(b)))
	}
	_, err = stdout.Write(b)
	return err
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}
