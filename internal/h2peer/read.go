package h2peer

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Event is what the other side sent that concerns one stream, or the
// connection as a whole (Stream 0).
type Event struct {
	Stream uint32
	// Headers marks a complete header block: Fields holds it decoded, and
	// Status its :status (0 without one).
	Headers bool
	Fields  []hpack.HeaderField
	Status  int
	Data    []byte // a DATA frame's data, copied
	End     bool   // END_STREAM
	// Err is a ResetError (Stream set), or on Stream 0 a GoAwayError or the
	// error that ended reading.
	Err error
	// Settings marks the other side's first SETTINGS (WaitSettings).
	Settings bool
}

// GoAwayError reports the other side's GOAWAY.
type GoAwayError struct {
	LastStream uint32
	Code       http2.ErrCode
}

func (e GoAwayError) Error() string {
	return fmt.Sprintf("h2peer: GOAWAY %v (last stream %d)", e.Code, e.LastStream)
}

// ResetError reports the other side's RST_STREAM.
type ResetError struct {
	Stream uint32
	Code   http2.ErrCode
}

func (e ResetError) Error() string {
	return fmt.Sprintf("h2peer: RST_STREAM %v on stream %d", e.Code, e.Stream)
}

// ReadFrame reads the next frame and answers nothing. Header blocks go
// through the decoder, so the HPACK state stays in step; a block that does
// not decode is an error. The frame is valid until the next read.
func (p *Peer) ReadFrame() (http2.Frame, error) {
	f, err := p.fr.ReadFrame()
	if err != nil {
		return nil, err
	}
	switch f := f.(type) {
	case *http2.HeadersFrame:
		p.fields = nil
		err = p.decode(f.HeaderBlockFragment(), f.HeadersEnded())
	case *http2.ContinuationFrame:
		err = p.decode(f.HeaderBlockFragment(), f.HeadersEnded())
	}
	if err != nil {
		return nil, fmt.Errorf("h2peer: decoding the header block on stream %d: %w", f.Header().StreamID, err)
	}
	return f, nil
}

func (p *Peer) decode(frag []byte, end bool) error {
	if _, err := p.dec.Write(frag); err != nil {
		return err
	}
	if end {
		return p.dec.Close()
	}
	return nil
}

// Next reads until something concerns a stream or the connection as a
// whole, with deadline as the connection's read deadline. On the way it
// acknowledges SETTINGS and answers PING, and it returns the flow-control
// credit of each DATA frame unless starve is set (a peer that never reads).
// Answers that fail to write are left for the next read to report.
func (p *Peer) Next(deadline time.Time, starve bool) Event {
	p.conn.SetReadDeadline(deadline)
	var blockEnds bool // END_STREAM of the header block being read
	for {
		f, err := p.ReadFrame()
		if err != nil {
			return Event{Err: err}
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if f.IsAck() {
				continue
			}
			first := p.settings == nil
			if first {
				p.settings = []http2.Setting{}
				f.ForeachSetting(func(s http2.Setting) error { p.settings = append(p.settings, s); return nil })
			}
			p.WriteSettingsAck()
			if first {
				return Event{Settings: true}
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				p.WritePing(true, f.Data)
			}
		case *http2.HeadersFrame:
			if f.HeadersEnded() {
				return p.headerEvent(f.StreamID, f.StreamEnded())
			}
			blockEnds = f.StreamEnded()
		case *http2.ContinuationFrame:
			if f.HeadersEnded() {
				return p.headerEvent(f.StreamID, blockEnds)
			}
		case *http2.DataFrame:
			if n := f.Length; n > 0 && !starve {
				p.WriteFrames(func(fr *http2.Framer) error {
					if err := fr.WriteWindowUpdate(0, n); err != nil {
						return err
					}
					return fr.WriteWindowUpdate(f.StreamID, n)
				})
			}
			return Event{Stream: f.StreamID, Data: bytes.Clone(f.Data()), End: f.StreamEnded()}
		case *http2.RSTStreamFrame:
			return Event{Stream: f.StreamID, Err: ResetError{Stream: f.StreamID, Code: f.ErrCode}}
		case *http2.GoAwayFrame:
			return Event{Err: GoAwayError{LastStream: f.LastStreamID, Code: f.ErrCode}}
		}
	}
}

func (p *Peer) headerEvent(id uint32, end bool) Event {
	ev := Event{Stream: id, Headers: true, Fields: p.fields, End: end}
	for _, f := range p.fields {
		if f.Name == ":status" {
			ev.Status, _ = strconv.Atoi(f.Value)
		}
	}
	return ev
}

// Status waits up to timeout for the header block that answers stream id
// and returns its :status. It fails with a ResetError if the stream is
// reset, and with a GoAwayError or the read error if the connection ends;
// a block without a :status is an error too. Other streams' events are
// passed over.
func (p *Peer) Status(id uint32, timeout time.Duration) (int, error) {
	deadline := time.Now().Add(timeout)
	for {
		ev := p.Next(deadline, false)
		switch {
		case ev.Err != nil && (ev.Stream == 0 || ev.Stream == id):
			return 0, ev.Err
		case ev.Headers && ev.Stream == id && ev.Status == 0:
			return 0, fmt.Errorf("h2peer: stream %d answered without a :status", id)
		case ev.Headers && ev.Stream == id:
			return ev.Status, nil
		}
	}
}

// WaitHeaders waits up to timeout for the next header block on any stream:
// how a Peer playing the server sees a request.
func (p *Peer) WaitHeaders(timeout time.Duration) (Event, error) {
	deadline := time.Now().Add(timeout)
	for {
		ev := p.Next(deadline, false)
		switch {
		case ev.Err != nil && ev.Stream == 0:
			return Event{}, ev.Err
		case ev.Headers:
			return ev, nil
		}
	}
}

// WaitReset waits up to timeout for RST_STREAM on stream id and returns its
// code.
func (p *Peer) WaitReset(id uint32, timeout time.Duration) (http2.ErrCode, error) {
	deadline := time.Now().Add(timeout)
	for {
		ev := p.Next(deadline, false)
		var reset ResetError
		switch {
		case ev.Stream == id && errors.As(ev.Err, &reset):
			return reset.Code, nil
		case ev.Err != nil && ev.Stream == 0:
			return 0, fmt.Errorf("h2peer: waiting for RST_STREAM on stream %d: %w", id, ev.Err)
		}
	}
}

// WaitSettings waits up to timeout for the other side's first SETTINGS,
// unless already read, and returns them. Under TLS 1.3 a server sends them
// only once it has accepted the client's certificate.
func (p *Peer) WaitSettings(timeout time.Duration) ([]http2.Setting, error) {
	deadline := time.Now().Add(timeout)
	for p.settings == nil {
		if ev := p.Next(deadline, false); ev.Err != nil {
			return nil, ev.Err
		}
	}
	return p.settings, nil
}

// RoundTrip sends msg as DATA on stream id and waits up to timeout to read
// it back, as an echo upstream returns it. Anything else that ends the
// stream or the connection first is an error.
func (p *Peer) RoundTrip(id uint32, msg []byte, timeout time.Duration) error {
	if err := p.WriteData(id, false, msg); err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	var got []byte
	for len(got) < len(msg) {
		ev := p.Next(deadline, false)
		if ev.Err != nil && (ev.Stream == 0 || ev.Stream == id) {
			return ev.Err
		}
		if ev.Stream == id {
			got = append(got, ev.Data...)
			if ev.End {
				break
			}
		}
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("h2peer: echo on stream %d: got %q, want %q", id, got, msg)
	}
	return nil
}

// WaitGoAway reads, answering nothing, until GOAWAY, for up to timeout,
// and returns its code. A test may still be writing a header block or a
// flood from another goroutine: an answer could land inside it.
func (p *Peer) WaitGoAway(timeout time.Duration) (http2.ErrCode, error) {
	p.conn.SetReadDeadline(time.Now().Add(timeout))
	for {
		f, err := p.ReadFrame()
		if err != nil {
			return 0, fmt.Errorf("h2peer: connection ended without GOAWAY: %w", err)
		}
		if ga, ok := f.(*http2.GoAwayFrame); ok {
			return ga.ErrCode, nil
		}
	}
}

// WaitClosed reads, answering nothing, for up to timeout until the other
// side closes the connection. It returns nil for a clean close (EOF), else
// the error that ended reading (a reset, the deadline).
func (p *Peer) WaitClosed(timeout time.Duration) error {
	p.conn.SetReadDeadline(time.Now().Add(timeout))
	for {
		if _, err := p.ReadFrame(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}
