package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/internal/kafkaadmin"
)

// runKafkaACLs serves "txpipe kafka-acls": it grants each role's SASL user
// what that role needs and nothing more (kafkaadmin.RoleACLs).
func runKafkaACLs(ctx context.Context, args []string, e *env) error {
	fs := newFlagSet("kafka-acls", e)
	fs.kafka()
	fs.topics()
	fs.logging()
	var p kafkaadmin.Principals
	var group string
	var dryRun bool
	fs.StringVar(&p.Ingest, "ingest-user", "", "SASL user of ingest: may write the commands topic")
	fs.StringVar(&p.Worker, "worker-user", "", "SASL user of the workers: may read the commands topic in --group-id")
	fs.StringVar(&p.Relay, "relay-user", "", "SASL user of the relays: may write the events, postings and DLQ topics")
	fs.StringVar(&p.Reader, "reader-user", "", "SASL user of analysts: may read the events and postings topics in groups starting with --reader-group-prefix")
	fs.StringVar(&p.ReaderGroupPrefix, "reader-group-prefix", "analytics.", "consumer group ids the reader may use start with this")
	fs.StringVar(&group, "group-id", "txpipe-workers", "consumer group of the workers")
	fs.BoolVar(&dryRun, "dry-run", false, "print the ACLs without creating them")
	cfg, err := fs.parse(args, e)
	if err != nil {
		return err
	}
	if p == (kafkaadmin.Principals{ReaderGroupPrefix: p.ReaderGroupPrefix}) {
		return usageError{"name at least one of --ingest-user, --worker-user, --relay-user, --reader-user"}
	}
	if p.Reader != "" && strings.HasPrefix(group, p.ReaderGroupPrefix) {
		return usageError{fmt.Sprintf("--reader-group-prefix %q covers the workers' group %q: the reader could join it and stall its partitions", p.ReaderGroupPrefix, group)}
	}
	acls := kafkaadmin.RoleACLs(p, kafkaadmin.TopicNames{Commands: cfg.commandsTopic, Events: cfg.eventsTopic,
		Postings: cfg.postingsTopic, Balances: cfg.balancesTopic, DLQ: cfg.dlqTopic}, group)
	for _, a := range acls {
		fmt.Fprintln(e.stdout, kafkaadmin.Describe(a))
	}
	if dryRun {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	transport, _, err := cfg.kafkaClients()
	if err != nil {
		return err
	}
	defer transport.CloseIdleConnections()
	client := &kafka.Client{Addr: kafka.TCP(cfg.brokers()...), Timeout: 10 * time.Second, Transport: transport}
	if err := kafkaadmin.CreateACLs(ctx, client, acls); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "%d ACLs in place\n", len(acls))
	return nil
}
