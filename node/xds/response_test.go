package xds

import (
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// countingPool counts the buffers given back to it.
type countingPool struct{ puts atomic.Int64 }

func (p *countingPool) Get(n int) *[]byte { b := make([]byte, n); return &b }
func (p *countingPool) Put(*[]byte)       { p.puts.Add(1) }

// chunked splits b into buffers of size bytes, as gRPC's frames arrive,
// from pool (nil: plain slices).
func chunked(b []byte, size int, pool mem.BufferPool) mem.BufferSlice {
	var s mem.BufferSlice
	for len(b) > 0 {
		c := b[:min(size, len(b))]
		b = b[len(c):]
		if pool == nil {
			s = append(s, mem.SliceBuffer(c))
			continue
		}
		s = append(s, mem.NewBuffer(&c, pool))
	}
	return s
}

// wholeResponse is a response with every field set and n resources, then
// unknown fields of each wire type, encoded.
func wholeResponse(t testing.TB, n int) []byte {
	t.Helper()
	resp := &discoveryv3.DeltaDiscoveryResponse{SystemVersionInfo: "v1", TypeUrl: TypeAddress, Nonce: "n-1",
		RemovedResources: []string{"gone-1", "gone-2"}, ControlPlane: &corev3.ControlPlane{Identifier: "istiod-1"}}
	for i := range n {
		name := "Kubernetes//Pod/ns/pod-" + strconv.Itoa(i)
		resp.Resources = append(resp.Resources, &discoveryv3.Resource{Name: name, Version: "v" + strconv.Itoa(i),
			Resource: &anypb.Any{TypeUrl: TypeAddress, Value: []byte(strings.Repeat("x", i%300))}})
	}
	b, err := proto.Marshal(resp)
	if err != nil {
		t.Fatal(err)
	}
	b = protowire.AppendTag(b, 100, protowire.VarintType)
	b = protowire.AppendVarint(b, 1<<40)
	b = protowire.AppendTag(b, 101, protowire.Fixed32Type)
	b = protowire.AppendFixed32(b, 7)
	b = protowire.AppendTag(b, 102, protowire.Fixed64Type)
	b = protowire.AppendFixed64(b, 8)
	return b
}

// TestResponseReadsResourcesLazily: a response decodes as gRPC's codec
// would decode it whole, however its frames split it, and gives each frame
// back to gRPC's pool once its resources are read, not before.
func TestResponseReadsResourcesLazily(t *testing.T) {
	const n = 1000
	b := wholeResponse(t, n)
	want := &discoveryv3.DeltaDiscoveryResponse{}
	if err := proto.Unmarshal(b, want); err != nil {
		t.Fatal(err)
	}
	wantResources := want.Resources
	want.Resources = nil
	for _, size := range []int{1, 3, 7, 1500, len(b)} {
		t.Run(strconv.Itoa(size), func(t *testing.T) {
			pool := &countingPool{}
			data := chunked(b, size, pool)
			pooled := int64(0)
			for _, c := range data {
				if _, ok := c.(mem.SliceBuffer); !ok {
					pooled++
				}
			}
			r := &response{}
			if err := (responseCodec{}).Unmarshal(data, r); err != nil {
				t.Fatal(err)
			}
			data.Free() // as gRPC does once Unmarshal returns
			if !proto.Equal(r.DeltaDiscoveryResponse, want) {
				t.Fatalf("fields but resources:\n got %v\nwant %v", r.DeltaDiscoveryResponse, want)
			}
			if pooled > 0 && pool.puts.Load() != 0 {
				t.Fatalf("%d of %d frames given back before the resources were read", pool.puts.Load(), pooled)
			}
			i := 0
			for res, err := range r.resources() {
				if err != nil {
					t.Fatal(err)
				}
				if !proto.Equal(res, wantResources[i]) {
					t.Fatalf("resource %d: got %v, want %v", i, res, wantResources[i])
				}
				if i == n/2 && pooled > 2 && (pool.puts.Load() == 0 || pool.puts.Load() >= pooled) {
					t.Errorf("halfway, %d of %d frames given back", pool.puts.Load(), pooled)
				}
				i++
			}
			if i != n {
				t.Fatalf("%d resources, want %d", i, n)
			}
			if got := pool.puts.Load(); got != pooled {
				t.Errorf("%d of %d frames given back once read", got, pooled)
			}
			for range r.resources() {
				t.Fatal("a response read twice")
			}
		})
	}
}

// TestResponseDecodesNothingUpFront: receiving istiod's largest answer
// allocates next to nothing; its resources are decoded as they are read.
func TestResponseDecodesNothingUpFront(t *testing.T) {
	b := wholeResponse(t, 20_000)
	data := chunked(b, 16<<10, nil)
	r := &response{}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if err := (responseCodec{}).Unmarshal(data, r); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	defer r.release()
	if got := after.TotalAlloc - before.TotalAlloc; got > 64<<10 {
		t.Errorf("receiving a %d-byte response allocated %d bytes, want under 64 KiB", len(b), got)
	}
}

// TestResponseMalformed: a message cut short or holding a group is refused
// whole; a resource that is not a Resource is named by its index
// and the rest still read.
func TestResponseMalformed(t *testing.T) {
	b := wholeResponse(t, 3)
	for _, cut := range []int{1, 10, len(b) / 2, len(b) - 1} {
		r := &response{}
		if err := (responseCodec{}).Unmarshal(chunked(b[:cut], 5, nil), r); err == nil {
			t.Errorf("a response cut at %d of %d bytes was read", cut, len(b))
		}
	}
	group := protowire.AppendTag(nil, 9, protowire.StartGroupType)
	if err := (responseCodec{}).Unmarshal(chunked(group, 5, nil), &response{}); err == nil {
		t.Error("a group was read")
	}

	good := func(name string) []byte {
		b, err := proto.Marshal(&discoveryv3.Resource{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		return protowire.AppendBytes(protowire.AppendTag(nil, resourcesField, protowire.BytesType), b)
	}
	bad := protowire.AppendBytes(protowire.AppendTag(nil, resourcesField, protowire.BytesType), []byte{0xff})
	msg := append(append(good("a"), bad...), good("c")...)
	r := &response{}
	if err := (responseCodec{}).Unmarshal(chunked(msg, 5, nil), r); err != nil {
		t.Fatal(err)
	}
	var got []string
	for res, err := range r.resources() {
		if err != nil {
			got = append(got, err.Error())
			continue
		}
		got = append(got, res.GetName())
	}
	if len(got) != 3 || got[0] != "a" || !strings.HasPrefix(got[1], "resources[1]: undecodable") || got[2] != "c" {
		t.Errorf("read %q", got)
	}
}
