// Package containertest starts PostgreSQL and Apache Kafka in containers with
// testcontainers-go, for developers who have a Docker engine but have not
// started the services of scripts/. Each service starts once per test binary
// and is reaped by testcontainers when the binary exits. CI does not use this
// path: it runs the services that scripts/ starts and sets the environment.
package containertest

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/wait"

	"github.com/txpipe/txpipe/internal/freeport"
)

// Images used when no environment is given.
const (
	PostgresImage = "postgres:15-alpine"
	KafkaImage    = "apache/kafka:4.1.2"
)

// DockerAvailable reports whether a Docker engine answers. testcontainers
// panics when it finds no Docker host at all, so that is recovered here.
func DockerAvailable() (ok bool) {
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	p, err := testcontainers.ProviderDefault.GetProvider()
	if err != nil {
		return false
	}
	defer p.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return p.Health(ctx) == nil
}

var (
	pgOnce sync.Once
	pgURL  string
	pgErr  error

	kafkaOnce    sync.Once
	kafkaBrokers string
	kafkaErr     error
)

// PostgresURL starts PostgreSQL once and returns a URL of a superuser-owned
// database that tests may create databases from.
func PostgresURL(ctx context.Context) (string, error) {
	pgOnce.Do(func() {
		c, err := testcontainers.Run(ctx, PostgresImage,
			testcontainers.WithEnv(map[string]string{"POSTGRES_USER": "txpipe", "POSTGRES_PASSWORD": "txpipe", "POSTGRES_DB": "txpipe"}),
			testcontainers.WithExposedPorts("5432/tcp"),
			testcontainers.WithWaitStrategy(
				wait.ForLog("database system is ready to accept connections").WithOccurrence(2).WithStartupTimeout(time.Minute),
				wait.ForListeningPort("5432/tcp")),
		)
		if err != nil {
			pgErr = fmt.Errorf("start postgres container: %w", err)
			return
		}
		endpoint, err := c.PortEndpoint(ctx, "5432/tcp", "")
		if err != nil {
			pgErr = fmt.Errorf("postgres container endpoint: %w", err)
			return
		}
		pgURL = "postgres://txpipe:txpipe@" + endpoint + "/txpipe?sslmode=disable"
	})
	return pgURL, pgErr
}

// KafkaBrokers starts a single-node KRaft Apache Kafka once and returns its
// bootstrap address. The broker advertises 127.0.0.1 on a host port chosen
// up front and bound 1:1, because a Kafka client must reach the address the
// broker advertises.
func KafkaBrokers(ctx context.Context) (string, error) {
	kafkaOnce.Do(func() {
		port, err := freePort()
		if err != nil {
			kafkaErr = err
			return
		}
		p := strconv.Itoa(port)
		_, err = testcontainers.Run(ctx, KafkaImage,
			testcontainers.WithEnv(map[string]string{
				"KAFKA_NODE_ID":                                          "1",
				"KAFKA_PROCESS_ROLES":                                    "broker,controller",
				"KAFKA_LISTENERS":                                        "PLAINTEXT://:" + p + ",CONTROLLER://:9093",
				"KAFKA_ADVERTISED_LISTENERS":                             "PLAINTEXT://127.0.0.1:" + p,
				"KAFKA_CONTROLLER_LISTENER_NAMES":                        "CONTROLLER",
				"KAFKA_LISTENER_SECURITY_PROTOCOL_MAP":                   "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
				"KAFKA_CONTROLLER_QUORUM_VOTERS":                         "1@localhost:9093",
				"KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR":                 "1",
				"KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS":                     "1",
				"KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR":         "1",
				"KAFKA_TRANSACTION_STATE_LOG_MIN_ISR":                    "1",
				"KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
				"KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR":            "1",
				"KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS":                 "0",
				"KAFKA_AUTO_CREATE_TOPICS_ENABLE":                        "false",
			}),
			testcontainers.WithExposedPorts(p+"/tcp"),
			testcontainers.WithHostConfigModifier(func(hc *container.HostConfig) {
				hc.PortBindings = network.PortMap{
					network.MustParsePort(p + "/tcp"): {{HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: p}},
				}
			}),
			testcontainers.WithWaitStrategy(wait.ForLog("Kafka Server started").WithStartupTimeout(2*time.Minute)),
		)
		if err != nil {
			kafkaErr = fmt.Errorf("start kafka container: %w", err)
			return
		}
		kafkaBrokers = "127.0.0.1:" + p
	})
	return kafkaBrokers, kafkaErr
}

func freePort() (int, error) {
	addr, err := freeport.Addr()
	if err != nil {
		return 0, err
	}
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(p)
}

// Env returns the value of the environment variable name, for a service
// only scripts/ provide (a TLS listener, a replica: no container stands in
// for it). Unset, it fails the test under CI=true and skips it otherwise.
func Env(t testing.TB, name string) string {
	t.Helper()
	if v := os.Getenv(name); v != "" {
		return v
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is not set; under CI=true the tests need the real services (eval \"$(make -s services)\")", name)
	}
	t.Skipf("%s is not set; run eval \"$(make -s services)\" to test against real services", name)
	return ""
}

// Address returns the value of the environment variable name when it is
// set. Otherwise it fails the test under CI=true (CI must test against the
// real services of scripts/), starts the service with start when a Docker
// engine answers, and skips the test, naming the variable, when neither.
func Address(t testing.TB, name string, start func(context.Context) (string, error)) string {
	t.Helper()
	if v := os.Getenv(name); v != "" {
		return v
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is not set; under CI=true the tests need the real services (eval \"$(make -s services)\")", name)
	}
	if !DockerAvailable() {
		t.Skipf("%s is not set and no Docker engine answers; run eval \"$(make -s services)\" to test against real services", name)
	}
	v, err := start(context.Background())
	if err != nil {
		t.Fatalf("%s is not set and the container could not start: %v", name, err)
	}
	return v
}
