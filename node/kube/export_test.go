package kube

import (
	"time"

	"k8s.io/client-go/kubernetes"
)

// SetClock makes a read the time from now (the cache's expiries).
func SetClock(a *TokenReviewAuthenticator, now func() time.Time) { a.now = now }

// CachedReviews reports how many review outcomes a caches.
func CachedReviews(a *TokenReviewAuthenticator) int { return a.cache.len() }

// FromClientset returns a Client over c (a fake clientset).
func FromClientset(c kubernetes.Interface) Client { return clientset{c} }
