// Package istioca speaks Istio's certificate protocol
// (istio.v1.auth.IstioCertificateService/CreateCertificate over gRPC), as a
// client and as a server. It is kept apart from package certs so that only
// the programs that talk to a CA link gRPC; the tunnel does not.
//
// # Client
//
// A [Client] is a certs.Issuer that asks istiod, or a `ferry ca` [Server],
// for workload certificates as a node agent: it sends the agent's projected
// service-account token and names the workload in the ImpersonatedIdentity
// metadata field. It checks that each certificate it gets carries exactly
// the identity it asked for. Hand it to certs.NewStore:
//
//	roots, err := certs.LoadRoots(rootFile)
//	...
//	ca, err := istioca.NewClient(istioca.ClientConfig{
//		Address:   "istiod.istio-system.svc:15012",
//		Roots:     roots,
//		TokenFile: "/var/run/secrets/tokens/istio-token",
//	})
//	...
//	defer ca.Close()
//	store, err := certs.NewStore(storeCfg, ca, log)
//
// # Server
//
// A [Server] signs with a certs.LocalCA. A caller gets a certificate for
// its own service account; a node agent (ServerConfig.NodeAgents) may also
// get one for any service account with a pod on its node. The server
// learns who a caller is, and which pods run where, from an
// [Authenticator], which package node/kube implements with Kubernetes
// TokenReviews. [Server.Serve] serves on a listener with a certificate it
// issues itself, and limits each source address's request rate, because
// any pod can reach it; [Server.Register] adds the service to a gRPC server
// of the caller's instead.
package istioca
