// Command testbed brings Ferry's network-namespace testbed up and down and
// drives it; scripts/testbed builds and runs it. Needs root.
//
//	testbed up     [--nodes N] [--pods M] [--spec FILE] [--run-dir DIR] [--prefix P]
//	               [--layout fabric|direct] [--capture node|pod] [--no-mesh] [--redirect ebpf|none] [--log-level L]
//	               [--agent-arg ARG]... [--ferry BIN] [--podapp BIN] [--ready-timeout SECONDS]
//	               [--keep-on-failure]
//	testbed down   [--run-dir DIR | --prefix P | --all] [--keep-logs]
//	testbed status [--run-dir DIR | --prefix P] [--json]
//	testbed agent  start|stop|kill|restart|wait NODE [--run-dir DIR | --prefix P] [--ready-timeout SECONDS]
//	testbed exec   POD|NODE|fabric [--run-dir DIR | --prefix P] -- COMMAND...
//	testbed get    POD URL [podapp get flags] [--run-dir DIR | --prefix P]
//
// POD is NAMESPACE/NAME. With one testbed up, --run-dir/--prefix may be
// omitted. Environment: TESTBED_NODES, TESTBED_PODS, TESTBED_SPEC,
// TESTBED_RUN_DIR, TESTBED_PREFIX, FERRY_BIN, PODAPP_BIN (defaults for the
// flags above); TESTBED_REPO is the repository that `up` builds missing
// binaries from.
//
// Spec file (default: N nodes, M pods per node, namespace "mesh"
// ambient-enrolled holding the odd-numbered pods, "plain" not enrolled
// holding the even ones):
//
//	namespace NAME [LABEL=VALUE]...
//	pod NAMESPACE/NAME NODE [sa=SERVICEACCOUNT] [LABEL=VALUE]...
//
// NODE is node1..nodeN. Lines starting with # are comments. See package
// internal/testbed for the topology, the names and the run directory.
package main
