package cni

import (
	"encoding/json"
	"flag"
	"fmt"
	"slices"
	"strings"
	"time"
)

// defaultExclude is the namespaces whose pods the plugin leaves alone unless
// the configuration says otherwise: the cluster's own, which must start even
// while the agent is down.
var defaultExclude = []string{"kube-system"}

// Conf is ferry-cni's own part of its entry in the CNI configuration list,
// beside "type": "ferry-cni". In JSON its fields are agent_socket, timeout (a
// Go duration string such as "30s") and exclude_namespaces. The zero value
// means every default.
type Conf struct {
	// AgentSocket is the agent's unix socket; "" means DefaultSocket.
	AgentSocket string
	// Timeout bounds the wait for the agent's answer to one ADD, DEL or
	// CHECK; 0 means DefaultTimeout.
	Timeout time.Duration
	// ExcludeNamespaces are namespaces whose pods the plugin passes through
	// without asking the agent, even when it is down. nil means
	// ["kube-system"]; an empty, non-nil list excludes none.
	ExcludeNamespaces []string
}

// RegisterFlags registers c's fields as --cni-socket, --cni-timeout and
// --cni-exclude-namespaces (comma-separated) on fs.
func (c *Conf) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.AgentSocket, "cni-socket", DefaultSocket, "the agent's unix socket for the CNI plugin")
	fs.DurationVar(&c.Timeout, "cni-timeout", DefaultTimeout, "how long the CNI plugin waits for the agent to capture a pod")
	fs.Func("cni-exclude-namespaces", "comma-separated namespaces whose pods start without the agent (default \"kube-system\"; \"\" excludes none)", func(s string) error {
		c.ExcludeNamespaces = []string{}
		for ns := range strings.SplitSeq(s, ",") {
			if ns = strings.TrimSpace(ns); ns != "" {
				c.ExcludeNamespaces = append(c.ExcludeNamespaces, ns)
			}
		}
		return nil
	})
}

// withDefaults returns c with each zero field set to its default.
func (c Conf) withDefaults() Conf {
	if c.AgentSocket == "" {
		c.AgentSocket = DefaultSocket
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.ExcludeNamespaces == nil {
		c.ExcludeNamespaces = slices.Clone(defaultExclude)
	}
	return c
}

func (c Conf) excluded(ns string) bool {
	return slices.Contains(c.withDefaults().ExcludeNamespaces, ns)
}

// confJSON is Conf's JSON form.
type confJSON struct {
	AgentSocket       string   `json:"agent_socket,omitempty"`
	Timeout           string   `json:"timeout,omitempty"`
	ExcludeNamespaces []string `json:"exclude_namespaces"`
}

// MarshalJSON writes every field, defaults filled in, so that the installed
// configuration says what the plugin does.
func (c Conf) MarshalJSON() ([]byte, error) {
	c = c.withDefaults()
	return json.Marshal(confJSON{AgentSocket: c.AgentSocket, Timeout: c.Timeout.String(), ExcludeNamespaces: c.ExcludeNamespaces})
}

// UnmarshalJSON reads c's fields from a network configuration, ignoring the
// others.
func (c *Conf) UnmarshalJSON(b []byte) error {
	var j confJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	var d time.Duration
	if j.Timeout != "" {
		var err error
		if d, err = time.ParseDuration(j.Timeout); err != nil || d < 0 {
			return fmt.Errorf("cni: timeout %q: want a positive duration such as \"30s\"", j.Timeout)
		}
	}
	*c = Conf{AgentSocket: j.AgentSocket, Timeout: d, ExcludeNamespaces: j.ExcludeNamespaces}
	return nil
}
