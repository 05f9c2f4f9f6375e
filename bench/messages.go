package main

import (
	"context"
	"errors"

	"github.com/multiconsumer/multiconsumer"
)

// runMCMessages: for m, err := range Messages(ctx), the range-over-func
// iterator. Its parameters are mc-get's and mc-iter's (w, q, group).
func runMCMessages(s spec) runner {
	return func(ctx context.Context, brokers []string, topic string, h handler) error {
		c, err := multiconsumer.New(ctx, mcConfig(s, brokers, topic))
		if err != nil {
			return err
		}
		defer c.Close()
		for m, err := range c.Messages(ctx) {
			if err != nil {
				if errors.Is(err, ctx.Err()) {
					return nil // the child's ctx ended: done
				}
				return err
			}
			h(m.Key, m.Value)
		}
		return nil
	}
}
