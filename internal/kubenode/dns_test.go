package kubenode

import (
	"context"
	"fmt"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// TestAnswerDNS resolves what a pod's resolver asks for with the search
// path the kubelet writes (ndots 5): the Service's name under the cluster
// domain gets its ClusterIP, the other search candidates NXDOMAIN, AAAA
// an empty success (so the resolver takes the A answer).
func TestAnswerDNS(t *testing.T) {
	c := fake.NewClientset(&corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "ferry-ca", Namespace: "istio-system"},
		Spec:       corev1.ServiceSpec{ClusterIP: "198.19.128.10"},
	}, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "headless", Namespace: "istio-system"},
		Spec:       corev1.ServiceSpec{ClusterIP: "None"},
	})
	for _, tc := range []struct {
		name  string
		qtype dnsmessage.Type
		rcode dnsmessage.RCode
		a     string
	}{
		{"ferry-ca.istio-system.svc.cluster.local.", dnsmessage.TypeA, dnsmessage.RCodeSuccess, "198.19.128.10"},
		{"FERRY-CA.istio-system.svc.cluster.local.", dnsmessage.TypeA, dnsmessage.RCodeSuccess, "198.19.128.10"},
		{"ferry-ca.istio-system.svc.cluster.local.", dnsmessage.TypeAAAA, dnsmessage.RCodeSuccess, ""},
		{"ferry-ca.istio-system.svc.istio-system.svc.cluster.local.", dnsmessage.TypeA, dnsmessage.RCodeNameError, ""},
		{"ferry-ca.istio-system.svc.svc.cluster.local.", dnsmessage.TypeA, dnsmessage.RCodeNameError, ""},
		{"nothere.istio-system.svc.cluster.local.", dnsmessage.TypeA, dnsmessage.RCodeNameError, ""},
		{"headless.istio-system.svc.cluster.local.", dnsmessage.TypeA, dnsmessage.RCodeNameError, ""},
		{"example.com.", dnsmessage.TypeA, dnsmessage.RCodeNameError, ""},
	} {
		b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 7, RecursionDesired: true})
		_ = b.StartQuestions()
		_ = b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(tc.name), Type: tc.qtype, Class: dnsmessage.ClassINET})
		q, err := b.Finish()
		if err != nil {
			t.Fatal(err)
		}
		resp, err := answerDNS(context.Background(), c, q)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		var m dnsmessage.Message
		if err := m.Unpack(resp); err != nil {
			t.Fatal(err)
		}
		if m.ID != 7 || !m.Response || m.RCode != tc.rcode || len(m.Questions) != 1 {
			t.Errorf("%s %v: header %+v, %d questions", tc.name, tc.qtype, m.Header, len(m.Questions))
		}
		var got string
		for _, a := range m.Answers {
			if r, ok := a.Body.(*dnsmessage.AResource); ok {
				got = netipFrom4(r.A)
			}
		}
		if got != tc.a {
			t.Errorf("%s %v: answer %q, want %q", tc.name, tc.qtype, got, tc.a)
		}
	}
}

func netipFrom4(a [4]byte) string {
	return fmt.Sprintf("%d.%d.%d.%d", a[0], a[1], a[2], a[3])
}
