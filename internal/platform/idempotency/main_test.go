package idempotency_test

import (
	"testing"

	"github.com/resiliencekit/payservice/internal/platform/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }
