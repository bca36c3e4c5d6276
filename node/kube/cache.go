package kube

import (
	"container/list"
	"sync"
	"time"

	"github.com/ferrymesh/ferry/certs/istioca"
)

// reviewCache holds the outcomes of token reviews by SHA-256 of the token,
// accepted and refused ones in separate LRU lists of at most size entries
// each. It is safe for concurrent use.
type reviewCache struct {
	mu       sync.Mutex
	size     int
	ok, fail list.List // of *reviewEntry, most recently used first
	m        map[[sha256Size]byte]*list.Element
}

const sha256Size = 32

type reviewEntry struct {
	key     [sha256Size]byte
	caller  istioca.Caller
	err     error // nil in ok, set in fail
	expires time.Time
}

func newReviewCache(size int) *reviewCache {
	return &reviewCache{size: size, m: map[[sha256Size]byte]*list.Element{}}
}

// get returns the outcome cached for key at now, if any.
func (c *reviewCache) get(key [sha256Size]byte, now time.Time) (istioca.Caller, error, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.m[key]
	if !ok {
		return istioca.Caller{}, nil, false
	}
	e := el.Value.(*reviewEntry)
	l := c.listOf(e)
	if !now.Before(e.expires) {
		l.Remove(el)
		delete(c.m, key)
		return istioca.Caller{}, nil, false
	}
	l.MoveToFront(el)
	return e.caller, e.err, true
}

// put caches an outcome for ttl from now; a ttl of zero or less caches
// nothing, and drops what was cached for key.
func (c *reviewCache) put(key [sha256Size]byte, caller istioca.Caller, err error, now time.Time, ttl time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.m[key]; ok {
		c.listOf(el.Value.(*reviewEntry)).Remove(el)
		delete(c.m, key)
	}
	if ttl <= 0 {
		return
	}
	e := &reviewEntry{key: key, caller: caller, err: err, expires: now.Add(ttl)}
	l := c.listOf(e)
	c.m[key] = l.PushFront(e)
	for l.Len() > c.size {
		old := l.Back()
		l.Remove(old)
		delete(c.m, old.Value.(*reviewEntry).key)
	}
}

// len reports how many outcomes are cached, expired ones included.
func (c *reviewCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

func (c *reviewCache) listOf(e *reviewEntry) *list.List {
	if e.err != nil {
		return &c.fail
	}
	return &c.ok
}
