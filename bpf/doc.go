// Package bpf holds Ferry's eBPF programs (C sources and their committed bpf2go
// output) and a typed loader: load, pin, attach the sk_lookup program to a
// network namespace, update the listener SOCKMAP and the enrolled-pods map,
// detach. It knows nothing about policy or identity.
package bpf
