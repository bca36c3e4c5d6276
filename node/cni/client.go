package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
)

// ErrUnreachable is wrapped by a Client's errors when the agent cannot be
// reached at all: no socket, or nothing serving it.
var ErrUnreachable = errors.New("cni: agent unreachable")

// Client speaks the protocol to the agent. Its zero value dials
// DefaultSocket. It is safe for concurrent use.
type Client struct {
	// Socket is the agent's unix socket; "" means DefaultSocket.
	Socket string
}

// AddPod asks the agent to capture p, and returns once the agent has (nil) or
// has failed (its error message, unchanged), or when ctx is done.
func (c *Client) AddPod(ctx context.Context, p Pod) error {
	return c.post(ctx, pathAdd, p)
}

// DelPod tells the agent that p's sandbox is being torn down.
func (c *Client) DelPod(ctx context.Context, p Pod) error {
	return c.post(ctx, pathDel, p)
}

// Check returns nil if the agent serves the protocol.
func (c *Client) Check(ctx context.Context) error {
	return c.do(ctx, http.MethodGet, pathHealth, nil)
}

func (c *Client) post(ctx context.Context, path string, p Pod) error {
	body, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("cni: encode pod: %w", err)
	}
	return c.do(ctx, http.MethodPost, path, body)
}

func (c *Client) socket() string {
	if c.Socket == "" {
		return DefaultSocket
	}
	return c.Socket
}

// do sends one request on a connection of its own: the plugin is a
// short-lived process that sends one.
func (c *Client) do(ctx context.Context, method, path string, body []byte) error {
	sock := c.socket()
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		DisableKeepAlives:      true,
		DisableCompression:     true,
		MaxResponseHeaderBytes: maxHeaderBytes,
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, method, "http://ferry"+path, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("cni: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		if oe := (*net.OpError)(nil); errors.As(err, &oe) && oe.Op == "dial" {
			return fmt.Errorf("%w at %s: %w", ErrUnreachable, sock, oe.Err)
		}
		return fmt.Errorf("cni: agent at %s: %w", sock, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if resp.StatusCode/100 == 2 {
		return nil
	}
	var e errorBody
	if json.Unmarshal(b, &e) != nil || e.Error == "" {
		e.Error = strings.TrimSpace(string(b))
		if e.Error == "" {
			e.Error = resp.Status
		}
	}
	return &AgentError{Status: resp.StatusCode, Msg: e.Error}
}

// AgentError is the agent's answer to a request it did not carry out: a hook's
// error, or a refusal of the request itself.
type AgentError struct {
	Status int    // the HTTP status
	Msg    string // the agent's message, unchanged
}

// Error returns the agent's message unchanged.
func (e *AgentError) Error() string { return e.Msg }
