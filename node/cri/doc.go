// Package cri asks the container runtime, over the Container Runtime
// Interface, for the pods that already run on the node and their network
// namespaces (--capture pod). The ferry-cni plugin hands the agent each new
// pod; pods that started before the plugin was installed, or that become
// enrolled later (a namespace labelled ambient), are found here instead: by
// the runtime's own record of each sandbox, not by scanning /proc.
package cri
