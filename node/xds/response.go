package xds

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"iter"
	"slices"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/encoding"
	protocodec "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// A response is a DeltaDiscoveryResponse whose resources stay encoded in the
// buffers gRPC received them in until the source reads them, one at a time.
// istiod's first answer is the whole mesh in one message (some 45 MB at 100k
// pods). Decoded whole, as gRPC's codec does, it is held three times over
// (gRPC's frames, one contiguous copy, and every resource decoded) beside
// the inventory read from it; read this way, each frame goes back to gRPC's
// pool once read, and each resource is garbage once converted.
type response struct {
	// DeltaDiscoveryResponse holds every field but Resources.
	*discoveryv3.DeltaDiscoveryResponse
	// unread is the message as received, until resources reads it or
	// release lets it go.
	unread *mem.Reader
}

// resourcesField is DeltaDiscoveryResponse.resources's field number.
const resourcesField = 2

// responseCodec is gRPC's proto codec, except that it reads a *response
// lazily.
type responseCodec struct{}

var protoCodec = encoding.GetCodecV2(protocodec.Name)

func (responseCodec) Name() string                           { return protoCodec.Name() }
func (responseCodec) Marshal(v any) (mem.BufferSlice, error) { return protoCodec.Marshal(v) }

func (responseCodec) Unmarshal(data mem.BufferSlice, v any) error {
	r, ok := v.(*response)
	if !ok {
		return protoCodec.Unmarshal(data, v)
	}
	return r.read(data)
}

// read decodes every field but the resources, checking that each is
// framed whole, and keeps a reference to data to read the resources from.
func (r *response) read(data mem.BufferSlice) error {
	scan := data.Reader()
	defer scan.Close()
	var head []byte
	for scan.Remaining() > 0 {
		num, typ, err := readTag(scan)
		if err != nil {
			return err
		}
		if num == resourcesField && typ == protowire.BytesType {
			if err := skipValue(scan, typ); err != nil {
				return err
			}
			continue
		}
		head = protowire.AppendTag(head, num, typ)
		if head, err = appendValue(head, scan, typ); err != nil {
			return err
		}
	}
	r.DeltaDiscoveryResponse = &discoveryv3.DeltaDiscoveryResponse{}
	if err := proto.Unmarshal(head, r.DeltaDiscoveryResponse); err != nil {
		return err
	}
	r.unread = data.Reader()
	return nil
}

// resources yields each resource in turn, or the reason one (named by its
// index) could not be decoded; the others still follow. It reads the
// message once: a second call yields nothing.
func (r *response) resources() iter.Seq2[*discoveryv3.Resource, error] {
	return func(yield func(*discoveryv3.Resource, error) bool) {
		defer r.release()
		var buf []byte
		for i := 0; r.unread != nil && r.unread.Remaining() > 0; {
			num, typ, err := readTag(r.unread)
			if err == nil && (num != resourcesField || typ != protowire.BytesType) {
				err = skipValue(r.unread, typ)
				if err == nil {
					continue
				}
			}
			if err != nil { // read checked the framing: not seen
				yield(nil, err)
				return
			}
			n, err := readLength(r.unread)
			if err == nil {
				buf = slices.Grow(buf[:0], n)[:n]
				_, err = io.ReadFull(r.unread, buf)
			}
			if err != nil {
				yield(nil, err)
				return
			}
			res := &discoveryv3.Resource{} // proto.Unmarshal copies out of buf
			if err = proto.Unmarshal(buf, res); err != nil {
				res, err = nil, fmt.Errorf("resources[%d]: undecodable: %w", i, err)
			}
			if !yield(res, err) {
				return
			}
			i++
		}
	}
}

// release lets go of the resources not read.
func (r *response) release() {
	if r.unread != nil {
		r.unread.Close()
		r.unread = nil
	}
}

var errTruncated = errors.New("xds: response truncated")

func readTag(rd *mem.Reader) (protowire.Number, protowire.Type, error) {
	tag, err := binary.ReadUvarint(rd)
	if err != nil {
		return 0, 0, errTruncated
	}
	num, typ := protowire.DecodeTag(tag)
	if !num.IsValid() {
		return 0, 0, fmt.Errorf("xds: response field number %d is invalid", num)
	}
	return num, typ, nil
}

func readLength(rd *mem.Reader) (int, error) {
	n, err := binary.ReadUvarint(rd)
	if err != nil || n > uint64(rd.Remaining()) {
		return 0, errTruncated
	}
	return int(n), nil
}

// readValue reads the start of a value of typ: a varint whole (v), else
// the size of the bytes that follow (n). Groups, deprecated and never in
// an xDS response, are refused.
func readValue(rd *mem.Reader, typ protowire.Type) (v uint64, n int, err error) {
	switch typ {
	case protowire.VarintType:
		if v, err = binary.ReadUvarint(rd); err != nil {
			return 0, 0, errTruncated
		}
		return v, 0, nil
	case protowire.BytesType:
		n, err = readLength(rd)
		return 0, n, err
	case protowire.Fixed32Type:
		return 0, 4, nil
	case protowire.Fixed64Type:
		return 0, 8, nil
	}
	return 0, 0, fmt.Errorf("xds: response field of wire type %d is not supported", typ)
}

func skipValue(rd *mem.Reader, typ protowire.Type) error {
	_, n, err := readValue(rd, typ)
	if err != nil {
		return err
	}
	if _, err := rd.Discard(n); err != nil {
		return errTruncated
	}
	return nil
}

// appendValue reads a value of typ and appends it, encoded, to b.
func appendValue(b []byte, rd *mem.Reader, typ protowire.Type) ([]byte, error) {
	v, n, err := readValue(rd, typ)
	if err != nil {
		return nil, err
	}
	switch typ {
	case protowire.VarintType:
		return protowire.AppendVarint(b, v), nil
	case protowire.BytesType:
		b = protowire.AppendVarint(b, uint64(n))
	}
	start := len(b)
	b = slices.Grow(b, n)[:start+n]
	if _, err := io.ReadFull(rd, b[start:]); err != nil {
		return nil, errTruncated
	}
	return b, nil
}
