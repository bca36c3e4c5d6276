// Package redirect computes and applies the policy routing that delivers
// enrolled pods' TCP to the Ferry agent in the node's network namespace, and
// provides the transparent sockets the agent uses on both ends.
//
// The plan is pure: NewPlan turns the set of enrolled pod addresses and a
// Config into the rules, routes and BPF map entries that must exist. Apply
// converges the calling thread's network namespace to a plan through netlink,
// touching only objects tagged with Ferry's protocol number (Protocol);
// Cleanup removes every such object and nothing else.
//
// The agent's loop is: plan, err := NewPlan(localPodIPs, cfg); then
// Converge(plan, objs) with the *bpf.Objects, which orders the map updates
// and Apply so a pod is never routed to the node's sockets while the BPF map
// does not know it. Apply, Converge and Cleanup are not safe to
// run concurrently with each other on one namespace; each call is otherwise
// self-contained (its own netlink socket, in the calling thread's namespace).
// bpf/README.md is the contract for every object Ferry owns in the kernel.
//
// Together with the sk_lookup program of package bpf this gives TPROXY
// semantics without iptables:
//
//	pref 99  iif lo lookup main                          node-originated traffic is never captured
//	pref 100 from <pod>/32 ipproto tcp lookup 15001      outbound: pod TCP is delivered locally
//	pref 101 ipproto tcp lookup 15006                    inbound: TCP to enrolled pods is delivered locally
//	table 15001: local 0.0.0.0/0 dev lo
//	table 15006: local <pod>/32 dev lo (one per enrolled pod)
//
// An enrolled pod's IPv6 addresses are refused, not captured, until Ferry
// carries IPv6 (NewPlan explains the choice of mechanism):
//
//	ip -6 pref 100 from <pod6>/128 ipproto tcp lookup 15001   the pod's own connections
//	ip -6 pref 100 to <pod6>/128 ipproto tcp lookup 15001     connections to the pod
//	ip -6 table 15001: prohibit ::/0
//
// Locally delivered connections then meet the sk_lookup program, which hands
// them to the agent's listeners; the agent sees the original destination as
// the accepted connection's local address.
package redirect
