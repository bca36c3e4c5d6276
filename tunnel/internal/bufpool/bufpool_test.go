package bufpool

import "testing"

// TestClasses: every size gets the smallest class that holds it, sizes
// beyond the largest class get the largest, and a buffer put back is
// handed out again for its class only.
func TestClasses(t *testing.T) {
	for _, tc := range []struct{ n, want int }{
		{0, 1 << 10}, {1, 1 << 10}, {1 << 10, 1 << 10}, {1<<10 + 1, 4 << 10},
		{16 << 10, 16 << 10}, {100 << 10, 256 << 10}, {MaxSize, MaxSize}, {1 << 20, MaxSize},
	} {
		b := Get(tc.n)
		if len(b) != tc.want || cap(b) != tc.want {
			t.Errorf("Get(%d): len %d cap %d, want %d", tc.n, len(b), cap(b), tc.want)
		}
		Put(b)
	}
	Put(make([]byte, 3000)) // foreign capacity: dropped, never handed out
	for range 100 {
		if b := Get(2000); cap(b) != 4<<10 {
			t.Fatalf("Get(2000) returned a buffer of cap %d", cap(b))
		}
	}
}
