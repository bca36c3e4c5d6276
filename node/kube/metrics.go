package kube

import "github.com/prometheus/client_golang/prometheus"

// CAMetrics are the metrics of `ferry ca serve`, on the registry given to
// NewCAMetrics (a private one, created in main).
type CAMetrics struct {
	// Reviews counts the TokenReviews sent to the API server, by result:
	// authenticated, unauthenticated or error (no answer).
	Reviews *prometheus.CounterVec
	// ReviewsAvoided counts authentications answered without a review of
	// their own, by how: from the cache, or by sharing a review in flight.
	ReviewsAvoided *prometheus.CounterVec
	// Refused counts certificate requests refused, by reason (see
	// istioca.ServerConfig.Refused).
	Refused *prometheus.CounterVec
}

// NewCAMetrics creates the CA's metrics and registers them with reg.
func NewCAMetrics(reg prometheus.Registerer) *CAMetrics {
	m := &CAMetrics{
		Reviews: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "ferry", Subsystem: "ca", Name: "token_reviews_total",
			Help: "TokenReviews sent to the API server, by result (authenticated, unauthenticated, error)."}, []string{"result"}),
		ReviewsAvoided: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "ferry", Subsystem: "ca", Name: "token_reviews_avoided_total",
			Help: "Token authentications answered without a TokenReview of their own, by how (cache, in_flight)."}, []string{"by"}),
		Refused: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "ferry", Subsystem: "ca", Name: "requests_refused_total",
			Help: "Certificate requests refused, by reason."}, []string{"reason"}),
	}
	reg.MustRegister(m.Reviews, m.ReviewsAvoided, m.Refused)
	return m
}
