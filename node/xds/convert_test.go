package xds

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ferrymesh/ferry/node/xds/workloadapi/security"
)

// TestDecodeRefusesUnknownFields: a field from a newer istiod may narrow a
// match; ignoring it could widen access, so the policy is refused and read
// fail-closed.
func TestDecodeRefusesUnknownFields(t *testing.T) {
	b, err := proto.Marshal(denyPolicy("foo", "p", 80))
	if err != nil {
		t.Fatal(err)
	}
	b = protowire.AppendTag(b, 99, protowire.VarintType)
	b = protowire.AppendVarint(b, 1)
	r, err := decode(TypeAuthorization, "foo/p", &anypb.Any{TypeUrl: TypeAuthorization, Value: b})
	if err == nil || !strings.Contains(err.Error(), "unknown to this Ferry") || r.policy == nil || len(r.policy.Problems) == 0 {
		t.Fatalf("decode: %v, %+v; want refused with a problem", err, r.policy)
	}
	if _, err := decode(TypeAuthorization, "foo/p", mustAny(t, denyPolicy("foo", "p", 80))); err != nil {
		t.Fatalf("a known policy: %v", err)
	}
}

func mustAny(t *testing.T, m *security.Authorization) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
