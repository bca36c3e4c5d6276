package testutil

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"
)

// HTTPGet fetches url (5 s at most) and returns its body; any status but
// 200 is an error naming the URL.
func HTTPGet(ctx context.Context, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("%s: %s", url, resp.Status)
	}
	return string(b), err
}

// HTTPGetJSON fetches url as HTTPGet does and decodes its JSON body into v.
func HTTPGetJSON(ctx context.Context, url string, v any) error {
	body, err := HTTPGet(ctx, url)
	if err != nil {
		return err
	}
	return json.Unmarshal([]byte(body), v)
}
