// Command istiohbone runs Istio's Go HBONE implementation
// (istio.io/istio/pkg/hbone) as a tunnel pair for Ferry's benchmark suite:
// the "istio-hbone" peer, the closest functional peer of Ferry's agent.
//
// It is its own Go module so that istio.io/istio never enters Ferry's
// go.mod. scripts/bench builds it.
//
//	istiohbone server -listen ADDR -cert F -key F -ca F [-debug-addr ADDR]
//	istiohbone client -listen ADDR -proxy ADDR -target ADDR -cert F -key F -ca F [-debug-addr ADDR]
//
// The server accepts HTTP/2 CONNECT over mutual TLS and dials each request's
// authority; the client accepts plain TCP and opens one CONNECT stream to
// -target through the server at -proxy for each connection.
package main
