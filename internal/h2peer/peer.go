package h2peer

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"sync"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

const (
	// maxReadFrame is far above the 16 KiB the other side may send us (we
	// never raise SETTINGS_MAX_FRAME_SIZE): an oversized frame is read and
	// left to the test to judge, not refused by the Framer.
	maxReadFrame = 1 << 20
	// decoderTableSize is SETTINGS_HEADER_TABLE_SIZE's default, which a Peer
	// never changes by itself.
	decoderTableSize = 4096
)

// Peer is one side of an HTTP/2 connection, driven by hand. Its write
// methods are safe for concurrent use; its read methods belong to one
// goroutine. Make one with New or Client; the zero value is not usable.
type Peer struct {
	conn net.Conn
	fr   *http2.Framer

	wmu    sync.Mutex // one writer at a time, and the encoder's order is the wire's
	enc    *hpack.Encoder
	encBuf bytes.Buffer

	dec      *hpack.Decoder
	fields   []hpack.HeaderField // the header block being read
	settings []http2.Setting     // the other side's first SETTINGS; nil until read
}

// New wraps c and sends nothing. The Framer lets every write through,
// illegal ones included: refusing them is the other side's job.
func New(c net.Conn) *Peer {
	p := &Peer{conn: c, fr: http2.NewFramer(c, c)}
	p.fr.AllowIllegalWrites = true
	p.fr.SetMaxReadFrameSize(maxReadFrame)
	p.enc = hpack.NewEncoder(&p.encBuf)
	p.dec = hpack.NewDecoder(decoderTableSize, func(f hpack.HeaderField) { p.fields = append(p.fields, f) })
	return p
}

// Client wraps c and starts the client side: the connection preface, then
// one SETTINGS frame carrying settings (none: an empty SETTINGS).
func Client(c net.Conn, settings ...http2.Setting) (*Peer, error) {
	p := New(c)
	if err := p.WritePreface(); err != nil {
		return nil, err
	}
	if err := p.WriteSettings(settings...); err != nil {
		return nil, err
	}
	return p, nil
}

// Conn returns the connection, for its deadlines.
func (p *Peer) Conn() net.Conn { return p.conn }

// Close closes the connection; a blocked read or write then returns.
func (p *Peer) Close() error { return p.conn.Close() }

// WritePreface sends the client connection preface (RFC 9113 §3.4).
func (p *Peer) WritePreface() error {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	_, err := io.WriteString(p.conn, http2.ClientPreface)
	return err
}

// ReadPreface reads the client connection preface, for a Peer playing the
// server; anything else is an error.
func (p *Peer) ReadPreface() error {
	var got [len(http2.ClientPreface)]byte
	if _, err := io.ReadFull(p.conn, got[:]); err != nil {
		return fmt.Errorf("h2peer: reading the client preface: %w", err)
	}
	if string(got[:]) != http2.ClientPreface {
		return fmt.Errorf("h2peer: client preface %q", got[:])
	}
	return nil
}

// WriteFrames runs f with the write lock held: for frames no other write
// may come between (a header block and its CONTINUATIONs), or a flood. f
// must not call the Peer's other write methods, nor Encode.
func (p *Peer) WriteFrames(f func(fr *http2.Framer) error) error {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	return f(p.fr)
}

// Encode HPACK-encodes fields with the connection's encoder, which may add
// them to its dynamic table and refer to earlier entries: the block must
// then be written, and before any block encoded after it.
func (p *Peer) Encode(fields ...hpack.HeaderField) []byte {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	return p.encodeLocked(fields)
}

func (p *Peer) encodeLocked(fields []hpack.HeaderField) []byte {
	p.encBuf.Reset()
	for _, f := range fields {
		p.enc.WriteField(f)
	}
	return bytes.Clone(p.encBuf.Bytes())
}

// ConnectFields are an HBONE CONNECT request's pseudo-header fields, then
// extra.
func ConnectFields(authority string, extra ...hpack.HeaderField) []hpack.HeaderField {
	return append([]hpack.HeaderField{{Name: ":method", Value: "CONNECT"}, {Name: ":authority", Value: authority}}, extra...)
}

// Connect sends a CONNECT to authority on stream id, extra fields after
// the pseudo-headers, leaving the stream open.
func (p *Peer) Connect(id uint32, authority string, extra ...hpack.HeaderField) error {
	return p.WriteHeaders(id, false, ConnectFields(authority, extra...)...)
}

// WriteHeaders encodes fields and sends them as one HEADERS frame with
// END_HEADERS; encoding and writing are one step, so concurrent writers
// keep the encoder in step with the wire.
func (p *Peer) WriteHeaders(id uint32, endStream bool, fields ...hpack.HeaderField) error {
	return p.WriteFrames(func(fr *http2.Framer) error {
		return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: p.encodeLocked(fields), EndStream: endStream, EndHeaders: true})
	})
}

// WriteHeaderBlock sends a HEADERS frame carrying block as it is: a
// fragment, or bytes no encoder would write.
func (p *Peer) WriteHeaderBlock(id uint32, endStream, endHeaders bool, block []byte) error {
	return p.WriteFrames(func(fr *http2.Framer) error {
		return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndStream: endStream, EndHeaders: endHeaders})
	})
}

// The methods below send one frame each, through the write lock.

func (p *Peer) WriteContinuation(id uint32, endHeaders bool, frag []byte) error {
	return p.WriteFrames(func(fr *http2.Framer) error { return fr.WriteContinuation(id, endHeaders, frag) })
}

// WriteRawFrame sends a frame of any type, flags and payload.
func (p *Peer) WriteRawFrame(typ http2.FrameType, flags http2.Flags, id uint32, payload []byte) error {
	return p.WriteFrames(func(fr *http2.Framer) error { return fr.WriteRawFrame(typ, flags, id, payload) })
}

func (p *Peer) WriteData(id uint32, endStream bool, data []byte) error {
	return p.WriteFrames(func(fr *http2.Framer) error { return fr.WriteData(id, endStream, data) })
}

func (p *Peer) WriteDataPadded(id uint32, endStream bool, data, pad []byte) error {
	return p.WriteFrames(func(fr *http2.Framer) error { return fr.WriteDataPadded(id, endStream, data, pad) })
}

func (p *Peer) WriteRSTStream(id uint32, code http2.ErrCode) error {
	return p.WriteFrames(func(fr *http2.Framer) error { return fr.WriteRSTStream(id, code) })
}

func (p *Peer) WriteSettings(settings ...http2.Setting) error {
	return p.WriteFrames(func(fr *http2.Framer) error { return fr.WriteSettings(settings...) })
}

func (p *Peer) WriteSettingsAck() error {
	return p.WriteFrames(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
}

func (p *Peer) WriteWindowUpdate(id, increment uint32) error {
	return p.WriteFrames(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(id, increment) })
}

func (p *Peer) WritePing(ack bool, data [8]byte) error {
	return p.WriteFrames(func(fr *http2.Framer) error { return fr.WritePing(ack, data) })
}

func (p *Peer) WritePriority(id uint32, param http2.PriorityParam) error {
	return p.WriteFrames(func(fr *http2.Framer) error { return fr.WritePriority(id, param) })
}

func (p *Peer) WriteGoAway(lastStream uint32, code http2.ErrCode, debug []byte) error {
	return p.WriteFrames(func(fr *http2.Framer) error { return fr.WriteGoAway(lastStream, code, debug) })
}
