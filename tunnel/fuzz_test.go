package tunnel

import (
	"bytes"
	"io"
	"net"
	"sync"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// FuzzServerFrames feeds arbitrary bytes after the preface to a server-side
// connection: it must neither panic nor hang, whatever the frames say.
func FuzzServerFrames(f *testing.F) {
	var seed bytes.Buffer
	fr := http2.NewFramer(&seed, nil)
	fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20})
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	enc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
	enc.WriteField(hpack.HeaderField{Name: ":authority", Value: "10.0.0.1:80"})
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true})
	fr.WriteData(1, false, []byte("hello"))
	fr.WriteDataPadded(1, true, []byte("x"), make([]byte, 7))
	fr.WriteWindowUpdate(0, 100)
	fr.WriteWindowUpdate(1, 100)
	fr.WriteRSTStream(1, http2.ErrCodeCancel)
	fr.WritePing(false, [8]byte{1})
	fr.WriteGoAway(0, http2.ErrCodeNo, nil)
	f.Add(seed.Bytes())
	f.Add([]byte{0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 1, 9, 0, 0, 0, 0, 1})

	f.Fuzz(func(t *testing.T, data []byte) {
		a, b := net.Pipe()
		var handlers sync.WaitGroup
		c := newH2Conn(b, connOptions{onStream: func(s *Stream) {
			handlers.Go(func() { // onStream runs on the read loop: no blocking
				s.respond(200, false)
				s.Close()
			})
		}})
		done := make(chan struct{})
		go func() {
			defer close(done)
			if c.handshake() == nil {
				c.run()
			}
			b.Close()
			handlers.Wait()
		}()
		go io.Copy(io.Discard, a) // the peer reads whatever we answer
		a.Write([]byte(http2.ClientPreface))
		a.Write(data)
		a.Close()
		<-done
	})
}
