package main

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestActiveLoop(t *testing.T) {
	addr := echoServer(t, 1024, -1, 0)
	conns := dialLoopback(t, addr, 20)
	for _, c := range conns {
		if _, err := c.Write(header(modeEcho, 1024)); err != nil {
			t.Fatal(err)
		}
	}
	lat, el, err := activeLoop(conns, 1024, 100*time.Millisecond, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if el < 250*time.Millisecond || el > time.Second {
		t.Errorf("elapsed %v, want about 300ms (the last slot at 295ms)", el)
	}
	// Three slots on each of 20 connections.
	if len(lat) != 60 {
		t.Errorf("%d exchanges, want 60", len(lat))
	}
}

func TestFirstOf(t *testing.T) {
	if err := firstOf(make([]error, 3)); err != nil {
		t.Errorf("firstOf(no errors) = %v", err)
	}
	a, b := errors.New("a"), errors.New("b")
	err := firstOf([]error{nil, a, b})
	if !errors.Is(err, a) || errors.Is(err, b) || !strings.Contains(err.Error(), "2 of 3") {
		t.Errorf("firstOf = %v, want a, counting 2 of 3", err)
	}
}
