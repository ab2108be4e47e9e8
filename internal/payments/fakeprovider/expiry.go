package fakeprovider

import (
	"fmt"
	"net/http"
	"time"
)

// CodeExpired is the error code of a request that reached its turn after its
// expires_at: nothing was done.
const CodeExpired = "request_expired"

// expiry is the optional deadline of a charge or refund request.
type expiry struct {
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
}

func (e expiry) passed(now time.Time) bool { return e.ExpiresAt != nil && now.After(*e.ExpiresAt) }

func expiredAnswer(e expiry) answer {
	return errorAnswer(http.StatusConflict, CodeExpired, fmt.Sprintf(
		"the request expired at %s before it could be carried out; nothing was done", e.ExpiresAt.UTC().Format(time.RFC3339Nano)))
}
