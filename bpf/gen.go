package bpf

// Regenerate with `make generate` (Debian 12's clang 14; the output is
// committed so building and testing need no clang).
//go:generate go tool bpf2go -cc clang-14 -strip llvm-strip-14 -tags linux -target bpfel -type ferry_listener -type ferry_verdict redirect c/redirect.c -- -I include -O2 -g -Wall -Werror
//go:generate go tool bpf2go -cc clang-14 -strip llvm-strip-14 -tags linux -target bpfel -type ferry_pod_key -type ferry_pod_conn pod c/pod.c -- -I include -O2 -g -Wall -Werror
