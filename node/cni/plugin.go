package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
)

// pluginVersions are the CNI spec versions the plugin speaks: those with
// chaining (prevResult), from 0.3.0.
var pluginVersions = version.VersionsStartingFrom("0.3.0")

// RunPlugin runs ferry-cni for the one command the container runtime asks of
// it through the CNI_* environment, with the network configuration on stdin:
//
//   - ADD asks the agent to capture the pod in CNI_NETNS and waits for it
//     (bounded by the configured timeout), then passes the previous
//     plugin's result on to stdout unchanged (re-encoded in the
//     configuration's CNI version, as chained plugins do); it fails if the
//     agent is unreachable or refuses (see the package doc), and if there
//     is no prevResult.
//   - DEL tells the agent and always succeeds, reachable or not.
//   - CHECK checks that the agent serves.
//   - VERSION, STATUS and GC are answered by the CNI library.
//
// On failure it writes the CNI error object to stdout, as the spec asks, and
// returns the error; the caller must then exit non-zero. Warnings go to
// stderr. about is shown when the binary is run without CNI_COMMAND.
func RunPlugin(ctx context.Context, stdout, stderr io.Writer, about string) error {
	funcs := skel.CNIFuncs{
		Add:   func(a *skel.CmdArgs) error { return cmdAdd(ctx, a, stdout) },
		Del:   func(a *skel.CmdArgs) error { return cmdDel(ctx, a, stderr) },
		Check: func(a *skel.CmdArgs) error { return cmdCheck(ctx, a) },
	}
	if e := skel.PluginMainFuncsWithError(funcs, pluginVersions, about); e != nil {
		b, _ := json.MarshalIndent(e, "", "  ")
		fmt.Fprintf(stdout, "%s\n", b)
		return e
	}
	return nil
}

// netConf is the plugin's network configuration as the runtime hands it over:
// the CNI library's fields, and ours.
type netConf struct {
	types.PluginConf
	ferry Conf
}

// parseNetConf parses stdin, including the previous plugin's result.
func parseNetConf(stdin []byte) (netConf, error) {
	var nc netConf
	if err := json.Unmarshal(stdin, &nc.PluginConf); err != nil {
		return nc, types.NewError(types.ErrDecodingFailure, "ferry-cni: network configuration: "+err.Error(), "")
	}
	if err := json.Unmarshal(stdin, &nc.ferry); err != nil {
		return nc, types.NewError(types.ErrInvalidNetworkConfig, "ferry-cni: network configuration: "+err.Error(), "")
	}
	if err := version.ParsePrevResult(&nc.PluginConf); err != nil {
		return nc, types.NewError(types.ErrDecodingFailure, "ferry-cni: prevResult: "+err.Error(), "")
	}
	return nc, nil
}

// errNoPrevResult is the error of an ADD or CHECK run alone rather than
// chained after the pod's network plugin.
var errNoPrevResult = types.NewError(types.ErrInvalidNetworkConfig,
	"ferry-cni: no prevResult: ferry-cni is a chained plugin; list it after the pod's network plugin in a .conflist", "")

// kubePod returns the pod that args describe, and false if the sandbox is
// not a Kubernetes pod's (CNI_ARGS has no K8S_POD_NAMESPACE or K8S_POD_NAME).
func kubePod(args *skel.CmdArgs) (Pod, bool) {
	kv := parseArgs(args.Args)
	p := Pod{
		ContainerID: args.ContainerID,
		Netns:       args.Netns,
		Namespace:   kv["K8S_POD_NAMESPACE"],
		Name:        kv["K8S_POD_NAME"],
		UID:         kv["K8S_POD_UID"],
	}
	if p.ContainerID == "" {
		p.ContainerID = kv["K8S_POD_INFRA_CONTAINER_ID"]
	}
	return p, p.Namespace != "" || p.Name != ""
}

// parseArgs parses CNI_ARGS, "K1=V1;K2=V2". Unknown keys are kept and
// ignored by the caller; malformed pairs are skipped.
func parseArgs(s string) map[string]string {
	kv := map[string]string{}
	for pair := range strings.SplitSeq(s, ";") {
		if k, v, ok := strings.Cut(pair, "="); ok && k != "" {
			kv[k] = v
		}
	}
	return kv
}

// podIPs returns the addresses of res on interfaces inside the sandbox (or
// on no named interface).
func podIPs(res types.Result) ([]netip.Addr, error) {
	r, err := current.NewResultFromResult(res)
	if err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "ferry-cni: prevResult: "+err.Error(), "")
	}
	var ips []netip.Addr
	for _, c := range r.IPs {
		if i := c.Interface; i != nil && *i >= 0 && *i < len(r.Interfaces) && r.Interfaces[*i].Sandbox == "" {
			continue // the host side of a veth pair
		}
		if a, ok := netip.AddrFromSlice(c.Address.IP); ok {
			ips = append(ips, a.Unmap())
		}
	}
	return ips, nil
}

func cmdAdd(ctx context.Context, args *skel.CmdArgs, stdout io.Writer) error {
	nc, err := parseNetConf(args.StdinData)
	if err != nil {
		return err
	}
	if nc.PrevResult == nil {
		return errNoPrevResult
	}
	if p, ok := kubePod(args); ok && !nc.ferry.excluded(p.Namespace) {
		if p.IPs, err = podIPs(nc.PrevResult); err != nil {
			return err
		}
		c := nc.ferry.withDefaults()
		ctx, cancel := context.WithTimeout(ctx, c.Timeout)
		err := (&Client{Socket: c.AgentSocket}).AddPod(ctx, p)
		cancel()
		if err != nil {
			return addError(p, c, err)
		}
	}
	res, err := nc.PrevResult.GetAsVersion(nc.CNIVersion)
	if err != nil {
		return types.NewError(types.ErrIncompatibleCNIVersion, "ferry-cni: prevResult: "+err.Error(), "")
	}
	return res.PrintTo(stdout)
}

// addError is the error of an ADD the agent did not carry out. The agent's
// own message is kept unchanged after the pod's name.
func addError(p Pod, c Conf, err error) error {
	if ae := (*AgentError)(nil); errors.As(err, &ae) {
		return types.NewError(types.ErrInternal, fmt.Sprintf("ferry-cni: add pod %s: %s", p, ae.Msg), "")
	}
	// Unreachable or too slow: transient, so the runtime retries the sandbox.
	details := "failing closed: pods start only once the Ferry agent on this node captures them"
	if len(c.ExcludeNamespaces) > 0 {
		details += ", except in namespaces " + strings.Join(c.ExcludeNamespaces, ", ")
	}
	return types.NewError(types.ErrTryAgainLater, fmt.Sprintf("ferry-cni: add pod %s: %v", p, err), details)
}

func cmdDel(ctx context.Context, args *skel.CmdArgs, stderr io.Writer) error {
	// A DEL must not fail for what is already gone, so a configuration this
	// plugin cannot read falls back to its defaults.
	nc, err := parseNetConf(args.StdinData)
	if err != nil {
		fmt.Fprintf(stderr, "ferry-cni: del: %v (using defaults)\n", err)
	}
	p, ok := kubePod(args)
	if !ok || nc.ferry.excluded(p.Namespace) {
		return nil
	}
	c := nc.ferry.withDefaults()
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	if err := (&Client{Socket: c.AgentSocket}).DelPod(ctx, p); err != nil {
		fmt.Fprintf(stderr, "ferry-cni: del pod %s: %v (ignored)\n", p, err)
	}
	return nil
}

func cmdCheck(ctx context.Context, args *skel.CmdArgs) error {
	nc, err := parseNetConf(args.StdinData)
	if err != nil {
		return err
	}
	if nc.PrevResult == nil {
		return errNoPrevResult
	}
	p, ok := kubePod(args)
	if !ok || nc.ferry.excluded(p.Namespace) {
		return nil
	}
	c := nc.ferry.withDefaults()
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	if err := (&Client{Socket: c.AgentSocket}).Check(ctx); err != nil {
		return types.NewError(types.ErrTryAgainLater, fmt.Sprintf("ferry-cni: check pod %s: %v", p, err), "")
	}
	return nil
}
