package client

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"
)

// DashboardLink asks the server for a one-time link that signs a browser
// in to this device's account's dashboard; it is bound to the device's key
// through its bearer token, works once and expires (in 10 minutes).
func (c *Client) DashboardLink(ctx context.Context) (link string, expires time.Time, err error) {
	tok, err := c.Token(ctx)
	if err != nil {
		return "", time.Time{}, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/dashboard/link", nil)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("client: dashboard link: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	res, err := c.hc.Do(req)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("client: dashboard link: %w", err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Body, 4096))
	if err != nil {
		return "", time.Time{}, fmt.Errorf("client: dashboard link: %w", err)
	}
	if res.StatusCode != http.StatusOK {
		return "", time.Time{}, fmt.Errorf("client: dashboard link: the server answered %s: %s", res.Status, SafeText(string(body)))
	}
	var ans struct {
		Path          string `json:"path"`
		ExpiresUnixMS int64  `json:"expires_unix_ms"`
	}
	if err := json.Unmarshal(body, &ans); err != nil || len(ans.Path) == 0 || ans.Path[0] != '/' {
		return "", time.Time{}, fmt.Errorf("client: dashboard link: the server's answer is not a link")
	}
	return c.base + ans.Path, time.UnixMilli(ans.ExpiresUnixMS), nil
}
