package main

import (
	"context"
	"fmt"
	"time"

	"github.com/txpipe/txpipe/consumers"
	"github.com/txpipe/txpipe/consumers/ledger"
	"github.com/txpipe/txpipe/domain"
	"github.com/txpipe/txpipe/outbox"
)

// balancesChunk is how many accounts "balances publish" writes a
// transaction.
const balancesChunk = 1000

// runBalances serves "txpipe balances publish": a record of every
// account's balance on the balances topic, through the outbox, so that the
// topic holds every account (workers publish an account's record only when
// a batch changes it).
func runBalances(ctx context.Context, args []string, e *env) error {
	if len(args) == 0 || args[0] != "publish" {
		return usageError{"usage: txpipe balances publish"}
	}
	fs := newFlagSet("balances publish", e)
	fs.database()
	fs.topics()
	fs.logging()
	cfg, err := fs.parse(args[1:], e)
	if err != nil {
		return err
	}
	if cfg.balancesTopic == "" {
		return usageError{"--balances-topic is empty: there is no balances topic to publish to"}
	}
	pool, err := cfg.openPool(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	log := cfg.logger(e)
	total, after := 0, ""
	for {
		last, n, err := ledger.PublishBalances(ctx, pool, after, balancesChunk, func(a *domain.Account, now time.Time) outbox.Message {
			return consumers.BalanceMessage(cfg.balancesTopic, a, now)
		})
		if err != nil {
			return fmt.Errorf("after %d accounts: %w", total, err)
		}
		total += n
		if n < balancesChunk {
			break
		}
		after = last
		log.Info("balances written to the outbox", "accounts", total)
	}
	fmt.Fprintf(e.stdout, "%d balances written to the outbox for %s; the relay publishes them\n", total, cfg.balancesTopic)
	return nil
}
