package coordinator

import (
	"context"

	"github.com/snapjet/snapjet/streams"
)

// Handle lets the tests of package coordinator_test, which build the
// coordinator on the fakes of coordtest (an import cycle from inside this
// package), hand it a report as the micro service would.
func (c *Coordinator) Handle(ctx context.Context, id, target string, data []byte) (streams.Verdict, error) {
	return c.handle(ctx, id, target, data)
}
