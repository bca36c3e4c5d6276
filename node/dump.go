package node

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/ferrymesh/ferry/authz"
)

// configDump implements adminSource.
func (a *Agent) configDump() ConfigDump {
	pending := a.ready.Pending()
	d := ConfigDump{
		Version: a.version, Node: a.cfg.NodeName, Ready: len(pending) == 0, Pending: pending, Config: a.cfg,
		Workloads: []WorkloadDump{}, Services: []ServiceDump{}, Policies: []PolicyDump{}, Certificates: []CertDump{},
	}
	s := a.current()
	if s != nil {
		for _, w := range s.view.byIP.All() {
			proto := "TCP"
			if w.Enrolled {
				proto = "HBONE"
			}
			var refused []string
			for _, ip := range append([]netip.Addr{w.IP}, w.IPs...) {
				if w.Local && w.Enrolled && a.redirect != nil && a.redirect.Refused(ip) && !slices.Contains(refused, ip.String()) {
					refused = append(refused, ip.String())
				}
			}
			d.Workloads = append(d.Workloads, WorkloadDump{
				Name: w.Name, Namespace: w.Namespace, Address: w.IP.String(), Node: w.NodeName,
				ServiceAccount: w.ServiceAccount, Identity: w.Identity().String(), Protocol: proto,
				Local: w.Local, Captured: w.Local && w.Enrolled && (a.redirect == nil || a.redirect.Captured(w.IP)),
				Refused: refused, Labels: w.Labels,
			})
		}
		slices.SortFunc(d.Workloads, func(x, y WorkloadDump) int {
			return strings.Compare(x.Namespace+"/"+x.Name, y.Namespace+"/"+y.Name)
		})
		d.Services = a.serviceDumps(s.view)
		d.Policies = policyDumps(s, a.cfg.SystemNamespace)
		for _, e := range s.view.snap.Errors {
			d.Errors = append(d.Errors, e.Error())
		}
		for _, e := range s.view.conflicts {
			d.Errors = append(d.Errors, e.Error())
		}
	}
	if a.redirect != nil {
		for _, ip := range a.redirect.pods() {
			d.BPFPods = append(d.BPFPods, ip.String())
		}
	}
	for _, c := range a.store.Snapshot() {
		d.Certificates = append(d.Certificates, CertDump{Identity: c.ID, State: string(c.State), Serial: c.Serial,
			NotBefore: c.NotBefore, NotAfter: c.NotAfter, ChainPEM: c.ChainPEM, Error: c.LastError})
	}
	return d
}

// policyDumps lists every policy object with its diagnostics.
func policyDumps(s *state, root string) []PolicyDump {
	type key struct{ kind, ns, name string }
	byKey := map[key]*PolicyDump{}
	var out []*PolicyDump
	add := func(p PolicyDump) {
		pd := &p
		byKey[key{p.Kind, p.Namespace, p.Name}] = pd
		out = append(out, pd)
	}
	scope := func(ns string, sel *authz.WorkloadSelector) string {
		switch {
		case sel != nil && len(sel.MatchLabels) > 0:
			return "WorkloadSelector"
		case ns == root:
			return "Global"
		}
		return "Namespace"
	}
	for _, p := range s.view.snap.AuthorizationPolicies {
		action := p.Spec.Action
		if action == "" {
			action = "ALLOW"
		}
		add(PolicyDump{Kind: authz.KindAuthorizationPolicy, Namespace: p.Metadata.Namespace, Name: p.Metadata.Name,
			Action: action, Scope: scope(p.Metadata.Namespace, p.Spec.Selector)})
	}
	for _, p := range s.view.snap.PeerAuthentications {
		mode := "UNSET"
		if p.Spec.MTLS != nil && p.Spec.MTLS.Mode != "" {
			mode = p.Spec.MTLS.Mode
		}
		add(PolicyDump{Kind: authz.KindPeerAuthentication, Namespace: p.Metadata.Namespace, Name: p.Metadata.Name,
			Action: mode, Scope: scope(p.Metadata.Namespace, p.Spec.Selector)})
	}
	for _, d := range s.diags {
		pd := byKey[key{d.Kind, d.Namespace, d.Name}]
		if pd == nil {
			// Left out of the snapshot (it could not be identified):
			// listed all the same.
			add(PolicyDump{Kind: d.Kind, Namespace: d.Namespace, Name: d.Name, Scope: "-"})
			pd = byKey[key{d.Kind, d.Namespace, d.Name}]
		}
		msg := d.Message
		if d.Field != "" {
			msg = fmt.Sprintf("%s: %s", d.Field, d.Message)
		}
		if d.Severity == authz.Error {
			pd.Errors = append(pd.Errors, msg)
			pd.Enforced = cmp.Or(pd.Enforced, d.Effect)
		} else {
			pd.Warnings = append(pd.Warnings, msg)
		}
	}
	res := make([]PolicyDump, len(out))
	for i, p := range out {
		res[i] = *p
	}
	return res
}

func (a *Agent) serviceDumps(v *view) []ServiceDump {
	out := []ServiceDump{}
	for i := range v.snap.Services {
		svc := &v.snap.Services[i]
		d := ServiceDump{Name: svc.Name, Namespace: svc.Namespace, Endpoints: len(v.endpointsOf(svc))}
		for _, ip := range svc.ClusterIPs {
			d.Addresses = append(d.Addresses, ip.String())
		}
		for _, p := range svc.Ports {
			port := fmt.Sprint(p.Port)
			switch {
			case p.TargetPort != 0 && p.TargetPort != p.Port:
				port += "→" + fmt.Sprint(p.TargetPort)
			case p.TargetPortName != "":
				port += "→" + p.TargetPortName
			}
			d.Ports = append(d.Ports, port)
		}
		if wp := svc.Waypoint; wp != nil {
			d.Waypoint = cmp.Or(wp.Hostname, wp.Address.String())
		}
		d.PickedByFerry, d.PickedByKubeProxy = a.picks.get(svc.Namespace + "/" + svc.Name)
		out = append(out, d)
	}
	return out
}
