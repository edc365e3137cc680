package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/consumers"
	"github.com/txpipe/txpipe/domain"
	"github.com/txpipe/txpipe/internal/kafkaadmin"
	"github.com/txpipe/txpipe/internal/kafkawriter"
)

// runDLQ serves "txpipe dlq list" and "txpipe dlq replay".
func runDLQ(ctx context.Context, args []string, e *env) error {
	if len(args) == 0 || (args[0] != "list" && args[0] != "replay") {
		return usageError{"usage: txpipe dlq list|replay [flags]"}
	}
	sub := args[0]
	fs := newFlagSet("dlq "+sub, e)
	fs.kafka()
	fs.topics()
	fs.logging()
	var only string
	if sub == "replay" {
		fs.StringVar(&only, "records", "", "comma-separated DLQ records to replay as partition@offset (as dlq list prints them), or \"all\"")
	}
	cfg, err := fs.parse(args[1:], e)
	if err != nil {
		return err
	}
	if sub == "replay" && only == "" {
		return usageError{"--records is required: partition@offset[,…] from txpipe dlq list, or all"}
	}
	log := cfg.logger(e)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	transport, _, err := cfg.kafkaClients()
	if err != nil {
		return err
	}
	defer transport.CloseIdleConnections()
	brokers := cfg.brokers()
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second, Transport: transport}
	msgs, err := kafkaadmin.ReadAll(ctx, client, brokers, cfg.dlqTopic)
	if err != nil {
		return err
	}
	if sub == "list" {
		for _, m := range msgs {
			fmt.Fprintln(e.stdout, describeDLQ(m))
		}
		fmt.Fprintf(e.stdout, "%d records in %s\n", len(msgs), cfg.dlqTopic)
		return nil
	}
	return replayDLQ(ctx, log, msgs, only, cfg.commandsTopic, brokers, transport, e)
}

// describeDLQ is one line of "dlq list": where the record sits in the DLQ,
// why it is there, where it came from, and its command id when readable.
func describeDLQ(m kafka.Message) string {
	h := map[string]string{}
	for _, x := range m.Headers {
		h[x.Key] = string(x.Value)
	}
	var head struct {
		CommandID string `json:"command_id"`
	}
	_ = json.Unmarshal(m.Value, &head) // undecodable records have no command id
	id := head.CommandID
	if id == "" {
		id = "-"
	}
	return fmt.Sprintf("%d@%d reason=%s source=%s/%s@%s key=%q command_id=%s at=%s detail=%q",
		m.Partition, m.Offset, h[consumers.HeaderDLQReason], h[consumers.HeaderSourceTopic], h[consumers.HeaderSourcePartition],
		h[consumers.HeaderSourceOffset], m.Key, id, h[consumers.HeaderDLQAt], h[consumers.HeaderDLQDetail])
}

// replayDLQ produces the chosen DLQ records, key and value unchanged, to the
// commands topic, with the API key that first submitted them (the DLQ
// record's txpipe_submitted_by header), so the outcome names its real
// sender. Replaying twice is safe: commands are idempotent by command_id,
// and a record that is still invalid goes to the DLQ again.
func replayDLQ(ctx context.Context, log *slog.Logger, msgs []kafka.Message, only, topic string, brokers []string, transport *kafka.Transport, e *env) error {
	want := map[string]bool{}
	for _, r := range strings.Split(only, ",") {
		want[strings.TrimSpace(r)] = true
	}
	var out []kafka.Message
	for _, m := range msgs {
		ref := strconv.Itoa(m.Partition) + "@" + strconv.FormatInt(m.Offset, 10)
		if want["all"] || want[ref] {
			headers := []kafka.Header{{Key: consumers.HeaderReplayedFrom, Value: []byte(ref)}}
			for _, h := range m.Headers {
				if h.Key == domain.SubmittedByHeader { // the key that first sent it stays its sender
					headers = append(headers, h)
				}
			}
			out = append(out, kafka.Message{Topic: topic, Key: m.Key, Value: m.Value, Headers: headers})
			delete(want, ref)
		}
	}
	delete(want, "all")
	if len(want) > 0 {
		var missing []string
		for r := range want {
			missing = append(missing, r)
		}
		return fmt.Errorf("not in the DLQ: %s", strings.Join(missing, ", "))
	}
	w := kafkawriter.New(kafkawriter.Options{Brokers: brokers, Transport: transport})
	defer w.Close()
	if err := w.WriteMessages(ctx, out...); err != nil {
		return fmt.Errorf("replay %d records: %w", len(out), err)
	}
	for _, m := range out {
		log.Info("dlq record replayed", "from", string(m.Headers[0].Value), "topic", topic)
	}
	fmt.Fprintf(e.stdout, "replayed %d records to %s\n", len(out), topic)
	return nil
}
