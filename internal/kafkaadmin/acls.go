package kafkaadmin

import (
	"context"
	"errors"
	"fmt"

	"github.com/segmentio/kafka-go"
)

// Principals names the SASL user of each role; an empty name gets no ACLs.
type Principals struct {
	Ingest, Worker, Relay string
	// Reader is the analysts' user: it reads the events and postings
	// topics in consumer groups whose ids start with ReaderGroupPrefix.
	Reader            string
	ReaderGroupPrefix string
}

// TopicNames are the five topics ACLs are granted on.
type TopicNames struct {
	Commands, Events, Postings, Balances, DLQ string
}

// RoleACLs is least privilege for each role (READ and WRITE imply DESCRIBE):
//
//   - ingest writes the commands topic, and nothing else;
//   - a worker reads the commands topic in its consumer group, and writes
//     nothing to Kafka: its outcomes go through the outbox;
//   - the relay writes the events, postings, balances and DLQ topics, and
//     reads none;
//   - the reader reads the events, postings and balances topics in its
//     groups.
//
// Nobody but ingest may produce commands (who can, can move money and set
// txpipe_submitted_by), and nobody but the relay may publish outcomes.
// Administration (creating topics, verify, replaying the DLQ) is for an
// operator's own principal.
func RoleACLs(p Principals, t TopicNames, workerGroup string) []kafka.ACLEntry {
	var acls []kafka.ACLEntry
	allow := func(user string, rt kafka.ResourceType, name string, pattern kafka.PatternType, op kafka.ACLOperationType) {
		acls = append(acls, kafka.ACLEntry{
			ResourceType: rt, ResourceName: name, ResourcePatternType: pattern,
			Principal: "User:" + user, Host: "*", Operation: op, PermissionType: kafka.ACLPermissionTypeAllow,
		})
	}
	topic := func(user, name string, op kafka.ACLOperationType) {
		allow(user, kafka.ResourceTypeTopic, name, kafka.PatternTypeLiteral, op)
	}
	if p.Ingest != "" {
		topic(p.Ingest, t.Commands, kafka.ACLOperationTypeWrite)
	}
	if p.Worker != "" {
		topic(p.Worker, t.Commands, kafka.ACLOperationTypeRead)
		allow(p.Worker, kafka.ResourceTypeGroup, workerGroup, kafka.PatternTypeLiteral, kafka.ACLOperationTypeRead)
	}
	if p.Relay != "" {
		for _, name := range []string{t.Events, t.Postings, t.Balances, t.DLQ} {
			if name != "" {
				topic(p.Relay, name, kafka.ACLOperationTypeWrite)
			}
		}
	}
	if p.Reader != "" {
		topic(p.Reader, t.Events, kafka.ACLOperationTypeRead)
		topic(p.Reader, t.Postings, kafka.ACLOperationTypeRead)
		if t.Balances != "" {
			topic(p.Reader, t.Balances, kafka.ACLOperationTypeRead)
		}
		allow(p.Reader, kafka.ResourceTypeGroup, p.ReaderGroupPrefix, kafka.PatternTypePrefixed, kafka.ACLOperationTypeRead)
	}
	return acls
}

// CreateACLs creates acls; ones that exist already are left as they are.
func CreateACLs(ctx context.Context, client *kafka.Client, acls []kafka.ACLEntry) error {
	resp, err := client.CreateACLs(ctx, &kafka.CreateACLsRequest{ACLs: acls})
	if err != nil {
		return fmt.Errorf("create ACLs: %w", err)
	}
	var errs []error
	for i, err := range resp.Errors {
		if err != nil {
			errs = append(errs, fmt.Errorf("ACL %s: %w", Describe(acls[i]), err))
		}
	}
	return errors.Join(errs...)
}

// Describe writes an ACL the way kafka-acls.sh lists it.
func Describe(a kafka.ACLEntry) string {
	return fmt.Sprintf("%s %s %s on %s %s:%s", a.PermissionType, a.Principal, a.Operation, a.ResourceType, a.ResourcePatternType, a.ResourceName)
}
