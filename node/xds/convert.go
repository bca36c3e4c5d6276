package xds

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"unique"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ferrymesh/ferry/authz"
	"github.com/ferrymesh/ferry/node/inventory"
	"github.com/ferrymesh/ferry/node/xds/workloadapi"
	"github.com/ferrymesh/ferry/node/xds/workloadapi/security"
)

// A resource is one decoded xDS resource: at most one of pod, service and
// policy is set (none for a workload Ferry does not model).
type resource struct {
	name, version string
	// failClosed marks a policy istiod sent that Ferry refused and never
	// accepted a version of: its problems are read fail-closed.
	failClosed bool
	pod        *inventory.Pod
	service    *inventory.Service
	policy     *authz.TranslatedPolicy
}

// decode reads one resource of typeURL. An error means the resource is
// refused (NACKed); for an Authorization it may come with a policy that
// carries the problems, which authz reads fail-closed when no good version
// is held.
func decode(typeURL, name string, a *anypb.Any) (resource, error) {
	if a == nil {
		return resource{}, errors.New("no resource body")
	}
	if a.GetTypeUrl() != typeURL {
		return resource{}, fmt.Errorf("resource of type %s in a %s response", a.GetTypeUrl(), typeURL)
	}
	switch typeURL {
	case TypeAddress:
		var addr workloadapi.Address
		if err := proto.Unmarshal(a.GetValue(), &addr); err != nil {
			return resource{}, err
		}
		switch t := addr.GetType().(type) {
		case *workloadapi.Address_Workload:
			p, err := podFromWorkload(name, t.Workload)
			return resource{pod: p}, err
		case *workloadapi.Address_Service:
			s, err := serviceFromProto(t.Service)
			return resource{service: s}, err
		}
		return resource{}, errors.New("address is neither a workload nor a service")
	case TypeAuthorization:
		var az security.Authorization
		if err := proto.Unmarshal(a.GetValue(), &az); err != nil {
			ns, n := splitName(name)
			tp := &authz.TranslatedPolicy{Namespace: ns, Name: n,
				Problems: []authz.FieldError{{Field: "", Message: "undecodable: " + err.Error()}}}
			return resource{policy: tp}, err
		}
		tp := policyFromProto(&az)
		if len(tp.Problems) > 0 {
			return resource{policy: tp}, problemsError(tp.Problems)
		}
		return resource{policy: tp}, nil
	}
	return resource{}, fmt.Errorf("unexpected type %s", typeURL)
}

func splitName(name string) (ns, n string) {
	ns, n, ok := strings.Cut(name, "/")
	if !ok {
		return "", name
	}
	return ns, n
}

func problemsError(ps []authz.FieldError) error {
	errs := make([]error, len(ps))
	for i, p := range ps {
		errs[i] = fmt.Errorf("%s: %s", p.Field, p.Message)
	}
	return errors.Join(errs...)
}

func addrFromBytes(b []byte) (netip.Addr, bool) {
	switch len(b) {
	case 4:
		return netip.AddrFrom4([4]byte(b)), true
	case 16:
		return netip.AddrFrom16([16]byte(b)).Unmap(), true
	}
	return netip.Addr{}, false
}

// podFromWorkload converts a Workload, resource name: a pod of 100k is
// held for as long as istiod lists it, so the strings pods repeat are
// interned and its UID (usually the name) and name share one copy. Only
// pods are kept (Ferry's inventory is pods); other workload types are
// refused with no error by returning nil.
func podFromWorkload(name string, w *workloadapi.Workload) (*inventory.Pod, error) {
	if w.GetName() == "" || w.GetNamespace() == "" || w.GetUid() == "" {
		return nil, errors.New("workload without uid, name or namespace")
	}
	if w.GetWorkloadType() != workloadapi.WorkloadType_POD {
		return nil, nil
	}
	uid := w.GetUid()
	if uid == name {
		uid = name
	}
	podName := w.GetName()
	if strings.HasSuffix(uid, "/"+podName) {
		podName = uid[len(uid)-len(podName):]
	}
	p := &inventory.Pod{
		Name:           podName,
		Namespace:      inventory.Intern(w.GetNamespace()),
		ServiceAccount: inventory.Intern(cmp.Or(w.GetServiceAccount(), "default")),
		NodeName:       inventory.Intern(w.GetNode()),
		HostNetwork:    w.GetNetworkMode() == workloadapi.NetworkMode_HOST_NETWORK,
		Mesh: &inventory.MeshWorkload{
			UID:                   uid,
			HBONE:                 w.GetTunnelProtocol() == workloadapi.TunnelProtocol_HBONE,
			AuthorizationPolicies: inventory.MakeNames(w.GetAuthorizationPolicies()...),
			Healthy:               w.GetStatus() == workloadapi.WorkloadStatus_HEALTHY,
		},
	}
	if l := w.GetLocality(); l.GetRegion()+l.GetZone()+l.GetSubzone() != "" {
		p.Mesh.Locality = unique.Make(inventory.Locality{Region: l.GetRegion(), Zone: l.GetZone(), Subzone: l.GetSubzone()})
	}
	for i, b := range w.GetAddresses() {
		a, ok := addrFromBytes(b)
		if !ok {
			return nil, fmt.Errorf("addresses[%d]: %d bytes, want 4 or 16", i, len(b))
		}
		p.IPs = append(p.IPs, a)
		if a.Is4() && !p.IP.IsValid() {
			p.IP = a
		}
	}
	wp, err := waypoint(w.GetWaypoint())
	if err != nil {
		return nil, err
	}
	p.Mesh.Waypoint = wp
	if c := w.GetCapacity(); c != nil {
		p.Mesh.Capacity = c.GetValue()
	} else {
		p.Mesh.Capacity = 1
	}
	services := make([]string, 0, len(w.GetServices()))
	for k, pl := range w.GetServices() {
		k = inventory.Intern(k)
		services = append(services, k)
		for _, port := range pl.GetPorts() {
			if port.GetServicePort() > 65535 || port.GetTargetPort() > 65535 {
				return nil, fmt.Errorf("services[%s]: port %d → %d out of range", k, port.GetServicePort(), port.GetTargetPort())
			}
			if port.GetTargetPort() == 0 {
				continue
			}
			if p.Mesh.TargetPorts == nil {
				p.Mesh.TargetPorts = map[string]map[uint16]uint16{}
			}
			if p.Mesh.TargetPorts[k] == nil {
				p.Mesh.TargetPorts[k] = map[uint16]uint16{}
			}
			p.Mesh.TargetPorts[k][uint16(port.GetServicePort())] = uint16(port.GetTargetPort())
		}
	}
	slices.Sort(services)
	p.Mesh.Services = inventory.MakeNames(services...)
	return p, nil
}

func serviceFromProto(s *workloadapi.Service) (*inventory.Service, error) {
	if s.GetName() == "" || s.GetNamespace() == "" || s.GetHostname() == "" {
		return nil, errors.New("service without name, namespace or hostname")
	}
	out := &inventory.Service{Name: s.GetName(), Namespace: s.GetNamespace(), Hostname: s.GetHostname()}
	for i, na := range s.GetAddresses() {
		a, ok := addrFromBytes(na.GetAddress())
		if !ok {
			return nil, fmt.Errorf("addresses[%d]: %d bytes, want 4 or 16", i, len(na.GetAddress()))
		}
		out.ClusterIPs = append(out.ClusterIPs, a)
	}
	wp, err := waypoint(s.GetWaypoint())
	if err != nil {
		return nil, err
	}
	out.Waypoint = wp
	if lb := s.GetLoadBalancing(); lb != nil {
		out.LoadBalancing = &inventory.LoadBalancing{
			Mode:           strings.TrimSuffix(lb.GetMode().String(), "_MODE"),
			AllowUnhealthy: lb.GetHealthPolicy() == workloadapi.LoadBalancing_ALLOW_ALL,
		}
		for _, sc := range lb.GetRoutingPreference() {
			out.LoadBalancing.RoutingPreference = append(out.LoadBalancing.RoutingPreference, sc.String())
		}
	}
	for i, p := range s.GetPorts() {
		if p.GetServicePort() == 0 || p.GetServicePort() > 65535 || p.GetTargetPort() > 65535 {
			return nil, fmt.Errorf("ports[%d]: service port %d, target port %d out of range", i, p.GetServicePort(), p.GetTargetPort())
		}
		out.Ports = append(out.Ports, inventory.ServicePort{Port: uint16(p.GetServicePort()), TargetPort: uint16(p.GetTargetPort())})
	}
	return out, nil
}

// waypoint converts a GatewayAddress; nil for none.
func waypoint(g *workloadapi.GatewayAddress) (*inventory.Waypoint, error) {
	if g == nil {
		return nil, nil
	}
	if g.GetHboneMtlsPort() == 0 || g.GetHboneMtlsPort() > 65535 {
		return nil, fmt.Errorf("waypoint: HBONE port %d out of range", g.GetHboneMtlsPort())
	}
	wp := &inventory.Waypoint{HBONEPort: uint16(g.GetHboneMtlsPort())}
	switch d := g.GetDestination().(type) {
	case *workloadapi.GatewayAddress_Address:
		a, ok := addrFromBytes(d.Address.GetAddress())
		if !ok {
			return nil, fmt.Errorf("waypoint: address of %d bytes", len(d.Address.GetAddress()))
		}
		wp.Address = a
	case *workloadapi.GatewayAddress_Hostname:
		if d.Hostname.GetHostname() == "" || d.Hostname.GetNamespace() == "" {
			return nil, errors.New("waypoint: hostname without namespace or name")
		}
		wp.Namespace, wp.Hostname = d.Hostname.GetNamespace(), d.Hostname.GetHostname()
	default:
		return nil, errors.New("waypoint without a destination")
	}
	return wp, nil
}

// policyFromProto converts an Authorization. What cannot be represented
// (an address of the wrong length, an unset string match) is left out and
// named in Problems, which authz reads fail-closed.
func policyFromProto(az *security.Authorization) *authz.TranslatedPolicy {
	tp := &authz.TranslatedPolicy{
		Name:      az.GetName(),
		Namespace: az.GetNamespace(),
		Scope:     az.GetScope().String(),
		Action:    az.GetAction().String(),
		DryRun:    az.GetDryRun(),
	}
	for _, e := range az.GetExtensions() {
		tp.Extensions = append(tp.Extensions, e.GetName())
	}
	problem := func(field, msg string) {
		tp.Problems = append(tp.Problems, authz.FieldError{Field: field, Message: msg})
	}
	// A field this build does not know (from a newer istiod) may narrow
	// what its message matches: ignoring it could widen access.
	unknown := func(m proto.Message, field string) {
		if len(m.ProtoReflect().GetUnknown()) > 0 {
			problem(field, "fields unknown to this Ferry (sent by a newer istiod?)")
		}
	}
	unknown(az, "")
	for gi, g := range az.GetGroups() {
		var tg authz.TranslatedGroup
		unknown(g, "groups["+strconv.Itoa(gi)+"]")
		for ri, r := range g.GetRules() {
			var tr authz.TranslatedRules
			unknown(r, "groups["+strconv.Itoa(gi)+"].rules["+strconv.Itoa(ri)+"]")
			for mi, m := range r.GetMatches() {
				at := "groups[" + strconv.Itoa(gi) + "].rules[" + strconv.Itoa(ri) + "].matches[" + strconv.Itoa(mi) + "]."
				unknown(m, strings.TrimSuffix(at, "."))
				tm := authz.TranslatedMatch{
					Namespaces:          strMatches(m.GetNamespaces(), at+"namespaces", problem),
					NotNamespaces:       strMatches(m.GetNotNamespaces(), at+"notNamespaces", problem),
					Principals:          strMatches(m.GetPrincipals(), at+"principals", problem),
					NotPrincipals:       strMatches(m.GetNotPrincipals(), at+"notPrincipals", problem),
					ServiceAccounts:     saMatches(m.GetServiceAccounts()),
					NotServiceAccounts:  saMatches(m.GetNotServiceAccounts()),
					SourceIPs:           prefixes(m.GetSourceIps(), at+"sourceIps", problem),
					NotSourceIPs:        prefixes(m.GetNotSourceIps(), at+"notSourceIps", problem),
					DestinationIPs:      prefixes(m.GetDestinationIps(), at+"destinationIps", problem),
					NotDestinationIPs:   prefixes(m.GetNotDestinationIps(), at+"notDestinationIps", problem),
					DestinationPorts:    slices.Clone(m.GetDestinationPorts()),
					NotDestinationPorts: slices.Clone(m.GetNotDestinationPorts()),
				}
				for _, e := range m.GetExtensions() {
					tm.Extensions = append(tm.Extensions, e.GetName())
				}
				tr.Matches = append(tr.Matches, tm)
			}
			tg.Rules = append(tg.Rules, tr)
		}
		tp.Groups = append(tp.Groups, tg)
	}
	return tp
}

func strMatches(ms []*security.StringMatch, field string, problem func(field, msg string)) []authz.StringMatch {
	var out []authz.StringMatch
	for i, m := range ms {
		switch t := m.GetMatchType().(type) {
		case *security.StringMatch_Exact:
			out = append(out, authz.StringMatch{Kind: authz.StringMatchExact, Value: t.Exact})
		case *security.StringMatch_Prefix:
			out = append(out, authz.StringMatch{Kind: authz.StringMatchPrefix, Value: t.Prefix})
		case *security.StringMatch_Suffix:
			out = append(out, authz.StringMatch{Kind: authz.StringMatchSuffix, Value: t.Suffix})
		case *security.StringMatch_Presence:
			out = append(out, authz.StringMatch{Kind: authz.StringMatchPresence})
		default:
			problem(field+"["+strconv.Itoa(i)+"]", "string match without a match type")
		}
	}
	return out
}

func saMatches(ms []*security.ServiceAccountMatch) []authz.ServiceAccountMatch {
	var out []authz.ServiceAccountMatch
	for _, m := range ms {
		out = append(out, authz.ServiceAccountMatch{Namespace: m.GetNamespace(), ServiceAccount: m.GetServiceAccount()})
	}
	return out
}

func prefixes(as []*security.Address, field string, problem func(field, msg string)) []netip.Prefix {
	var out []netip.Prefix
	for i, a := range as {
		addr, ok := addrFromBytes(a.GetAddress())
		if !ok {
			problem(field+"["+strconv.Itoa(i)+"]", fmt.Sprintf("address of %d bytes, want 4 or 16", len(a.GetAddress())))
			continue
		}
		p, err := addr.Prefix(int(a.GetLength()))
		if err != nil || int(a.GetLength()) > addr.BitLen() {
			problem(field+"["+strconv.Itoa(i)+"]", fmt.Sprintf("prefix length %d for %s", a.GetLength(), addr))
			continue
		}
		out = append(out, p)
	}
	return out
}
