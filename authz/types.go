package authz

import "time"

// The types below mirror the YAML/JSON shape of Istio's security.istio.io/v1
// AuthorizationPolicy and PeerAuthentication, so manifests unmarshal into them
// directly (field names as in Istio's API). They are plain data: Compile
// validates them.

// ObjectMeta is the part of Kubernetes object metadata policy needs.
type ObjectMeta struct {
	Name              string    `json:"name"`
	Namespace         string    `json:"namespace"`
	CreationTimestamp time.Time `json:"creationTimestamp,omitzero"`
	// Annotations is read for istio.io/dry-run only.
	Annotations map[string]string `json:"annotations,omitempty"`
}

// AuthorizationPolicy is a security.istio.io/v1 AuthorizationPolicy.
type AuthorizationPolicy struct {
	Metadata ObjectMeta              `json:"metadata"`
	Spec     AuthorizationPolicySpec `json:"spec"`
	// Problems lists what the decoder found wrong in the object as written
	// (unknown, duplicate or mistyped fields), which Spec cannot show.
	// Compile reports each as an error and reads the object fail-closed.
	Problems []FieldError `json:"-"`
}

// FieldError is one problem found while decoding an object. Field is its
// path inside spec, as in Diagnostic.Field ("rules[0].from[0].source.principal"),
// "metadata.x" for metadata, or a top-level field's name.
type FieldError struct {
	Field   string
	Message string
}

// AuthorizationPolicySpec is AuthorizationPolicy.spec.
type AuthorizationPolicySpec struct {
	Selector   *WorkloadSelector `json:"selector,omitempty"`
	TargetRef  *TargetRef        `json:"targetRef,omitempty"`
	TargetRefs []TargetRef       `json:"targetRefs,omitempty"`
	// Action is ALLOW (the default when empty), DENY, AUDIT or CUSTOM.
	Action   string    `json:"action,omitempty"`
	Provider *Provider `json:"provider,omitempty"`
	Rules    []Rule    `json:"rules,omitempty"`
}

// WorkloadSelector selects workloads by label.
type WorkloadSelector struct {
	MatchLabels map[string]string `json:"matchLabels,omitempty"`
}

// TargetRef names a Gateway, Service or ServiceEntry a policy attaches to.
type TargetRef struct {
	Group     string `json:"group,omitempty"`
	Kind      string `json:"kind,omitempty"`
	Name      string `json:"name,omitempty"`
	Namespace string `json:"namespace,omitempty"`
}

// Provider names the external authorizer of a CUSTOM policy.
type Provider struct {
	Name string `json:"name,omitempty"`
}

// Rule matches a request: every non-empty field must match.
type Rule struct {
	From []From      `json:"from,omitempty"`
	To   []To        `json:"to,omitempty"`
	When []Condition `json:"when,omitempty"`
}

// From holds one Source.
type From struct {
	Source Source `json:"source"`
}

// Source matches the connection's source.
type Source struct {
	Principals           []string `json:"principals,omitempty"`
	NotPrincipals        []string `json:"notPrincipals,omitempty"`
	RequestPrincipals    []string `json:"requestPrincipals,omitempty"`
	NotRequestPrincipals []string `json:"notRequestPrincipals,omitempty"`
	Namespaces           []string `json:"namespaces,omitempty"`
	NotNamespaces        []string `json:"notNamespaces,omitempty"`
	ServiceAccounts      []string `json:"serviceAccounts,omitempty"`
	NotServiceAccounts   []string `json:"notServiceAccounts,omitempty"`
	IPBlocks             []string `json:"ipBlocks,omitempty"`
	NotIPBlocks          []string `json:"notIpBlocks,omitempty"`
	RemoteIPBlocks       []string `json:"remoteIpBlocks,omitempty"`
	NotRemoteIPBlocks    []string `json:"notRemoteIpBlocks,omitempty"`
	// TrustDomains and NotTrustDomains are accepted but not enforced:
	// ztunnel ignores them too (Compile warns).
	TrustDomains    []string `json:"trustDomains,omitempty"`
	NotTrustDomains []string `json:"notTrustDomains,omitempty"`
}

// To holds one Operation.
type To struct {
	Operation Operation `json:"operation"`
}

// Operation matches the connection's destination.
type Operation struct {
	Hosts      []string `json:"hosts,omitempty"`
	NotHosts   []string `json:"notHosts,omitempty"`
	Ports      []string `json:"ports,omitempty"`
	NotPorts   []string `json:"notPorts,omitempty"`
	Methods    []string `json:"methods,omitempty"`
	NotMethods []string `json:"notMethods,omitempty"`
	Paths      []string `json:"paths,omitempty"`
	NotPaths   []string `json:"notPaths,omitempty"`
}

// Condition is one `when` entry.
type Condition struct {
	Key       string   `json:"key"`
	Values    []string `json:"values,omitempty"`
	NotValues []string `json:"notValues,omitempty"`
}

// PeerAuthentication is a security.istio.io/v1 PeerAuthentication.
type PeerAuthentication struct {
	Metadata ObjectMeta             `json:"metadata"`
	Spec     PeerAuthenticationSpec `json:"spec"`
	// Problems is as in AuthorizationPolicy.
	Problems []FieldError `json:"-"`
}

// PeerAuthenticationSpec is PeerAuthentication.spec.
type PeerAuthenticationSpec struct {
	Selector *WorkloadSelector `json:"selector,omitempty"`
	MTLS     *MTLS             `json:"mtls,omitempty"`
	// PortLevelMTLS keys are port numbers (YAML map keys are strings).
	PortLevelMTLS map[string]MTLS `json:"portLevelMtls,omitempty"`
}

// MTLS holds a mode: UNSET, DISABLE, PERMISSIVE or STRICT.
type MTLS struct {
	Mode string `json:"mode,omitempty"`
}
