package main

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestHandler(t *testing.T) {
	srv := httptest.NewServer(handler("h", "ns/pod"))
	defer srv.Close()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{srv.URL + "/ip"}, "200\n127.0.0.1\n"},
		{[]string{srv.URL + "/"}, "200\nhostname=h pod=ns/pod\n"},
		{[]string{srv.URL + "/bytes?n=3"}, "200\nxxx"},
		{[]string{srv.URL + "/echo", "--data", "2"}, "200\nxx"},
		{[]string{srv.URL + "/bytes?n=-1", "--expect-code", "400"}, "400\nn: want 0..2^30\n"},
	} {
		var out bytes.Buffer
		if err := run(t.Context(), append([]string{"get"}, tc.args...), &out); err != nil {
			t.Errorf("get %v: %v", tc.args, err)
		}
		if out.String() != tc.want {
			t.Errorf("get %v = %q, want %q", tc.args, out.String(), tc.want)
		}
	}
}

func TestGetFailure(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	var out bytes.Buffer
	if err := run(t.Context(), []string{"get", url, "--timeout", "2s"}, &out); err == nil {
		t.Error("get on a closed server: no error")
	}
	if !strings.HasPrefix(out.String(), "000\n") {
		t.Errorf("output %q, want 000", out.String())
	}
	out.Reset()
	if err := run(t.Context(), []string{"get", url, "--expect-code", "0"}, &out); err != nil {
		t.Errorf("get --expect-code 0 on a closed server: %v", err)
	}
}
