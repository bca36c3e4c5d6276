package e2e

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"testing"
)

// packet is one captured TCP segment.
type packet struct {
	src, dst netip.AddrPort
	payload  []byte
}

// parsePcap reads a classic pcap file (as tcpdump -w writes it) of Ethernet
// frames and returns its IPv4 TCP segments; other frames are skipped.
func parsePcap(b []byte) ([]packet, error) {
	if len(b) < 24 {
		return nil, errors.New("pcap: short header")
	}
	var bo binary.ByteOrder
	switch binary.LittleEndian.Uint32(b) {
	case 0xa1b2c3d4, 0xa1b23c4d:
		bo = binary.LittleEndian
	case 0xd4c3b2a1, 0x4d3cb2a1:
		bo = binary.BigEndian
	default:
		return nil, fmt.Errorf("pcap: bad magic %x", b[:4])
	}
	// Where the IP packet starts, and where its EtherType is, per link type.
	var l3, etype int
	switch lt := bo.Uint32(b[20:]); lt {
	case 1: // Ethernet
		l3, etype = 14, 12
	case 113: // Linux cooked capture (tcpdump -i any)
		l3, etype = 16, 14
	case 276: // Linux cooked capture v2
		l3, etype = 20, 0
	default:
		return nil, fmt.Errorf("pcap: link type %d, want Ethernet or Linux cooked", lt)
	}
	var out []packet
	for b = b[24:]; len(b) > 0; {
		if len(b) < 16 {
			return out, errors.New("pcap: truncated record header")
		}
		n := int(bo.Uint32(b[8:]))
		if len(b) < 16+n {
			break // tcpdump killed mid-write: keep what is complete
		}
		frame := b[16 : 16+n]
		b = b[16+n:]
		if p, ok := parseFrame(frame, l3, etype); ok {
			out = append(out, p)
		}
	}
	return out, nil
}

func parseFrame(f []byte, l3, etype int) (packet, bool) {
	if len(f) < l3+20 || binary.BigEndian.Uint16(f[etype:]) != 0x0800 {
		return packet{}, false
	}
	ip := f[l3:]
	ihl := int(ip[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(ip[2:]))
	if ip[0]>>4 != 4 || ip[9] != 6 || ihl < 20 || total > len(ip) || total < ihl+20 {
		return packet{}, false
	}
	tcp := ip[ihl:total]
	off := int(tcp[12]>>4) * 4
	if off < 20 || off > len(tcp) {
		return packet{}, false
	}
	src := netip.AddrFrom4([4]byte(ip[12:16]))
	dst := netip.AddrFrom4([4]byte(ip[16:20]))
	return packet{
		src:     netip.AddrPortFrom(src, binary.BigEndian.Uint16(tcp[0:])),
		dst:     netip.AddrPortFrom(dst, binary.BigEndian.Uint16(tcp[2:])),
		payload: tcp[off:],
	}, true
}

// captureSummary is what a fabric capture shows about one exchange.
type captureSummary struct {
	segments     int // TCP segments with payload
	hbone        int // ... to or from port 15008
	tlsRecords   int // ... starting with a TLS record header (handshake or application data)
	plaintextApp int // ... to or from port 8000
	httpRequests int // ... containing "GET /ip" (an HTTP request in the clear)
}

func summarize(pkts []packet) captureSummary {
	var s captureSummary
	for _, p := range pkts {
		if len(p.payload) == 0 {
			continue
		}
		s.segments++
		if p.src.Port() == 15008 || p.dst.Port() == 15008 {
			s.hbone++
			if isTLSRecord(p.payload) {
				s.tlsRecords++
			}
		}
		if p.src.Port() == 8000 || p.dst.Port() == 8000 {
			s.plaintextApp++
		}
		if bytes.Contains(p.payload, []byte("GET /ip")) {
			s.httpRequests++
		}
	}
	return s
}

// isTLSRecord reports whether b starts with a TLS 1.2/1.3 record header of a
// handshake (22) or application data (23) record.
func isTLSRecord(b []byte) bool {
	return len(b) >= 5 && (b[0] == 22 || b[0] == 23) && b[1] == 3 && b[2] <= 4
}

func TestParsePcap(t *testing.T) {
	// One Ethernet/IPv4/TCP frame 198.18.1.2:40000 → 198.18.2.2:15008 carrying a TLS
	// application-data record header, then a non-IP frame.
	var file bytes.Buffer
	hdr := make([]byte, 24)
	binary.LittleEndian.PutUint32(hdr, 0xa1b2c3d4)
	binary.LittleEndian.PutUint16(hdr[4:], 2)
	binary.LittleEndian.PutUint16(hdr[6:], 4)
	binary.LittleEndian.PutUint32(hdr[16:], 65535)
	binary.LittleEndian.PutUint32(hdr[20:], 1)
	file.Write(hdr)
	payload := []byte{23, 3, 3, 0, 1, 0xaa}
	frame := make([]byte, 14+20+20)
	binary.BigEndian.PutUint16(frame[12:], 0x0800)
	ip := frame[14:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+20+len(payload)))
	ip[9] = 6
	copy(ip[12:], []byte{198, 18, 1, 2, 198, 18, 2, 2})
	tcp := ip[20:]
	binary.BigEndian.PutUint16(tcp[0:], 40000)
	binary.BigEndian.PutUint16(tcp[2:], 15008)
	tcp[12] = 5 << 4
	frame = append(frame, payload...)
	arp := make([]byte, 42)
	binary.BigEndian.PutUint16(arp[12:], 0x0806)
	for _, f := range [][]byte{frame, arp} {
		rec := make([]byte, 16)
		binary.LittleEndian.PutUint32(rec[8:], uint32(len(f)))
		binary.LittleEndian.PutUint32(rec[12:], uint32(len(f)))
		file.Write(rec)
		file.Write(f)
	}
	pkts, err := parsePcap(file.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if len(pkts) != 1 {
		t.Fatalf("got %d packets, want 1", len(pkts))
	}
	p := pkts[0]
	if p.src.String() != "198.18.1.2:40000" || p.dst.String() != "198.18.2.2:15008" || !bytes.Equal(p.payload, payload) {
		t.Errorf("got %v → %v %x", p.src, p.dst, p.payload)
	}
	if s := summarize(pkts); s != (captureSummary{segments: 1, hbone: 1, tlsRecords: 1}) {
		t.Errorf("summary %+v", s)
	}
}
