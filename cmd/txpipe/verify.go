package main

import (
	"context"
	"errors"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/consumers/audit"
)

// errViolations makes "txpipe verify" exit 1 after printing its report.
var errViolations = errors.New("invariants violated")

func runVerify(ctx context.Context, args []string, e *env) error {
	fs := newFlagSet("verify", e)
	fs.database()
	fs.kafka()
	fs.topics()
	fs.StringVar(&fs.cfg.groupID, "group-id", "txpipe-workers", "consumer group of the workers")
	fs.logging()
	cfg, err := fs.parse(args, e)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	pool, err := cfg.openPool(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	transport, _, err := cfg.kafkaClients()
	if err != nil {
		return err
	}
	defer transport.CloseIdleConnections()
	brokers := cfg.brokers()
	report, err := audit.Run(ctx, audit.Options{
		Pool: pool, Brokers: brokers,
		Client:        &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second, Transport: transport},
		CommandsTopic: cfg.commandsTopic, EventsTopic: cfg.eventsTopic, PostingsTopic: cfg.postingsTopic, BalancesTopic: cfg.balancesTopic, DLQTopic: cfg.dlqTopic,
		GroupID: cfg.groupID,
	})
	if err != nil {
		return err
	}
	report.Print(e.stdout)
	if !report.OK() {
		return errViolations
	}
	return nil
}
