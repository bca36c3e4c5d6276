// Command kube-node is the command line of package kubenode, run by
// scripts/kube-node (which builds the binaries it needs first):
//
//	kube-node up --bin-dir DIR --pause FILE [--dir DIR] [--cni bridge|macvlan]
//	kube-node down [--dir DIR]
//	kube-node status [--dir DIR]
//
// up brings a real node up and prints the admin kubeconfig's path as its
// last line; down removes everything the node made, also after a failed
// up; status says what runs and what exists.
package main
