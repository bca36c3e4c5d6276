// Package interop checks Ferry's HBONE server and client against
// implementations nobody here wrote: Istio's Go pkg/hbone (both directions)
// and Node.js's built-in http2 module as a CONNECT client. It is a separate
// module so that istio.io/istio never enters Ferry's own go.mod; run it with
// `cd test/interop && go test ./...`.
package interop
