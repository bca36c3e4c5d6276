package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/internal/testbed"
)

// BenchmarkPrivilegedPodToPod measures pod→pod throughput (HTTP GET of 16 MiB)
// and 1 KiB request/response latency (HTTP POST echo on a kept-alive
// connection) between two nodes, without and with the mesh, on one testbed:
// "nomesh" runs between non-enrolled pods, "mesh" between enrolled pods
// (captured, HBONE over mTLS, authorized). Each request comes from a socket
// opened in the client pod's network namespace.
//
//	PRIVILEGED_TESTS=1 go test -run '^$' -bench PodToPod -benchtime 3s ./e2e
func BenchmarkPrivilegedPodToPod(b *testing.B) {
	if os.Getenv("PRIVILEGED_TESTS") != "1" {
		b.Skip("privileged benchmark: set PRIVILEGED_TESTS=1 and run as root")
	}
	if os.Geteuid() != 0 {
		b.Fatal("PRIVILEGED_TESTS=1 but not running as root")
	}
	bins := buildAll(b)
	tb := startTestbed(b, bins, tbOptions{spec: meshSpec, logLevel: "warn"})
	for _, path := range []struct{ name, from, to string }{
		{"nomesh", "plain/client", "plain/remote"},
		{"mesh", "mesh/client", "mesh/remote"},
	} {
		from, to := tb.pod(b, path.from), tb.pod(b, path.to)
		base := "http://" + to.IP + ":8000"
		b.Run(path.name+"/throughput", func(b *testing.B) {
			const n = 16 << 20
			c := podClient(from)
			defer c.CloseIdleConnections()
			b.SetBytes(n)
			for b.Loop() {
				if err := fetch(c, http.MethodGet, fmt.Sprintf("%s/bytes?n=%d", base, n), nil, n); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(path.name+"/rr1KiB", func(b *testing.B) {
			c := podClient(from)
			defer c.CloseIdleConnections()
			body := bytes.Repeat([]byte{'x'}, 1024)
			if err := fetch(c, http.MethodPost, base+"/echo", body, len(body)); err != nil { // connect outside the loop
				b.Fatal(err)
			}
			var lat []time.Duration
			for b.Loop() {
				start := time.Now()
				if err := fetch(c, http.MethodPost, base+"/echo", body, len(body)); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
}

// podClient is an HTTP client whose connections are opened from pod's network
// namespace, one kept-alive connection at a time.
func podClient(pod testbed.Pod) *http.Client {
	return &http.Client{
		Timeout: time.Minute,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
				return dialFrom(ctx, pod.Netns, addr)
			},
			MaxIdleConnsPerHost: 1,
			DisableCompression:  true,
		},
	}
}

// fetch makes one request and checks the response is 200 with want bytes.
func fetch(c *http.Client, method, url string, body []byte, want int) error {
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || n != int64(want) {
		return fmt.Errorf("%s %s: status %d, %d bytes, want 200 and %d bytes", method, url, resp.StatusCode, n, want)
	}
	return nil
}
