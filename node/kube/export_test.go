package kube

import "time"

// SetClock makes a read the time from now (the cache's expiries).
func SetClock(a *TokenReviewAuthenticator, now func() time.Time) { a.now = now }

// CachedReviews reports how many review outcomes a caches.
func CachedReviews(a *TokenReviewAuthenticator) int { return a.cache.len() }
