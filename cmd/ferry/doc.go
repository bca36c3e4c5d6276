// Command ferry is the node-level ambient tunnel agent and its operator CLI:
// agent, ca, status, workloads, policies, certs, connections, log, policy check,
// cleanup and version.
package main
