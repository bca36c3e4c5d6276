package kubenode

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"golang.org/x/net/dns/dnsmessage"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// ClusterDomain is the cluster's DNS domain; the kubelet writes it into
// pods' search paths.
const ClusterDomain = "cluster.local"

// DNSAddr is where the kubelet tells pods (and hostNetwork pods with
// dnsPolicy ClusterFirstWithHostNet) their nameserver is: port 53 on
// GatewayIP. Nothing answers there unless ServeDNS runs.
var DNSAddr = netip.AddrPortFrom(GatewayIP, 53)

// ServeDNS answers A queries for Service names (NAME.NAMESPACE.svc.
// ClusterDomain) with their ClusterIP, read from the API server per query,
// until ctx ends: the part of cluster DNS that Ferry's manifests rely on
// (the agent reaches ferry-ca.istio-system.svc by name, as in any
// cluster). Every other name gets NXDOMAIN, so resolvers move on to the
// host's search domains. It listens on DNSAddr (UDP), which exists once Up
// has made the bridge. The node does not run it by itself: scripts/kube-node
// up exits, and a test that needs names runs it for its lifetime.
func ServeDNS(ctx context.Context, c kubernetes.Interface) error {
	conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(DNSAddr))
	if err != nil {
		return fmt.Errorf("kubenode: dns: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	buf := make([]byte, 1500)
	for {
		n, from, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("kubenode: dns: %w", err)
		}
		resp, err := answerDNS(ctx, c, buf[:n])
		if err != nil {
			continue // not a query we can parse: drop it
		}
		_, _ = conn.WriteToUDPAddrPort(resp, from)
	}
}

// answerDNS builds the response to one query message.
func answerDNS(ctx context.Context, c kubernetes.Interface, req []byte) ([]byte, error) {
	var p dnsmessage.Parser
	h, err := p.Start(req)
	if err != nil {
		return nil, err
	}
	q, err := p.Question()
	if err != nil {
		return nil, err
	}
	rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired, RCode: dnsmessage.RCodeSuccess}
	var answer *dnsmessage.AResource
	ip, found, err := serviceIP(ctx, c, q.Name.String())
	switch {
	case err != nil:
		rh.RCode = dnsmessage.RCodeServerFailure
	case !found:
		rh.RCode = dnsmessage.RCodeNameError
	case q.Type == dnsmessage.TypeA && ip.Is4():
		answer = &dnsmessage.AResource{A: ip.As4()}
	}
	b := dnsmessage.NewBuilder(nil, rh)
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	if err := b.Question(q); err != nil {
		return nil, err
	}
	if answer != nil {
		if err := b.StartAnswers(); err != nil {
			return nil, err
		}
		if err := b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 5}, *answer); err != nil {
			return nil, err
		}
	}
	return b.Finish()
}

// serviceIP looks NAME.NAMESPACE.svc.ClusterDomain. up; found is false for
// any other name and for a Service that does not exist or has no ClusterIP.
func serviceIP(ctx context.Context, c kubernetes.Interface, fqdn string) (ip netip.Addr, found bool, err error) {
	rest, ok := strings.CutSuffix(strings.ToLower(fqdn), ".svc."+ClusterDomain+".")
	if !ok {
		return netip.Addr{}, false, nil
	}
	name, ns, ok := strings.Cut(rest, ".")
	if !ok || strings.Contains(ns, ".") {
		return netip.Addr{}, false, nil
	}
	svc, err := c.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return netip.Addr{}, false, nil
	}
	if err != nil {
		return netip.Addr{}, false, err
	}
	ip, err = netip.ParseAddr(svc.Spec.ClusterIP)
	if err != nil {
		return netip.Addr{}, false, nil // headless or not yet allocated
	}
	return ip, true, nil
}
