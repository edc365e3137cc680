package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl/scram"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/txpipe/txpipe/domain/sealing"
	"github.com/txpipe/txpipe/internal/envflag"
	"github.com/txpipe/txpipe/internal/pgnode"
)

// config is every setting of every subcommand; each subcommand defines the
// flags it uses.
type config struct {
	kafkaBrokers string
	kafkaTLSCA   string
	kafkaUser    string
	kafkaPass    string
	databaseURL  string
	// readDatabaseURL, when set, serves the API's reads (a replica).
	readDatabaseURL string
	httpAddr        string
	adminAddr       string
	tlsCert         string
	tlsKey          string
	logLevel        string

	commandsTopic, eventsTopic, postingsTopic, balancesTopic, dlqTopic string

	partitions        int
	replicationFactor int

	maxBodyBytes   int64
	rateLimit      float64
	rateBurst      int
	produceLinger  time.Duration
	produceTimeout time.Duration

	groupID        string
	batchSize      int
	lanes          int
	batchLinger    time.Duration
	sessionTimeout time.Duration
	expiryInterval time.Duration

	relayBatchSize    int
	relayPollInterval time.Duration
	relayListenURL    string
	relayLeaseTTL     time.Duration

	shutdownTimeout time.Duration

	metadataKeys string
	keyring      *sealing.Keyring // parsed from metadataKeys
}

// flagSet groups the flags by what uses them.
type flagSet struct {
	*flag.FlagSet
	cfg *config
}

func newFlagSet(name string, e *env) flagSet {
	fs := flag.NewFlagSet("txpipe "+name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	return flagSet{FlagSet: fs, cfg: &config{}}
}

func (f flagSet) logging() {
	f.StringVar(&f.cfg.logLevel, "log-level", "info", "log level: debug, info, warn or error")
}

func (f flagSet) database() {
	f.StringVar(&f.cfg.databaseURL, "database-url", "", "PostgreSQL URL, e.g. postgres://user:pass@host:5432/db (pgxpool settings such as pool_max_conns allowed)")
}

func (f flagSet) kafka() {
	f.StringVar(&f.cfg.kafkaBrokers, "kafka-brokers", "127.0.0.1:9092", "comma-separated Kafka bootstrap brokers")
	f.StringVar(&f.cfg.kafkaTLSCA, "kafka-tls-ca", "", "PEM CA file: talk to Kafka over TLS, verifying the brokers against it")
	f.StringVar(&f.cfg.kafkaUser, "kafka-sasl-user", "", "SASL/SCRAM-SHA-512 user (with --kafka-sasl-password)")
	f.StringVar(&f.cfg.kafkaPass, "kafka-sasl-password", "", "SASL/SCRAM-SHA-512 password; pass it as TXPIPE_KAFKA_SASL_PASSWORD_FILE rather than a flag")
}

func (f flagSet) topics() {
	f.StringVar(&f.cfg.commandsTopic, "commands-topic", "ledger.commands.v1", "topic of incoming commands")
	f.StringVar(&f.cfg.eventsTopic, "events-topic", "ledger.events.v1", "topic of outcome events")
	f.StringVar(&f.cfg.postingsTopic, "postings-topic", "ledger.postings.v1", "topic of postings")
	f.StringVar(&f.cfg.balancesTopic, "balances-topic", "ledger.balances.v1", `log-compacted topic of each account's latest balance ("" for none: the workers then write no balance records)`)
	f.StringVar(&f.cfg.dlqTopic, "dlq-topic", "ledger.commands.dlq.v1", "topic of records that could not be applied")
}

func (f flagSet) admin() {
	f.StringVar(&f.cfg.adminAddr, "admin-addr", ":9090", "address of /metrics, /healthz and /readyz")
	f.DurationVar(&f.cfg.shutdownTimeout, "shutdown-timeout", 20*time.Second, "how long a stopping process may take to drain")
	f.StringVar(&f.cfg.tlsCert, "tls-cert", "", "PEM certificate (chain) file: serve the API and admin addresses over HTTPS (with --tls-key)")
	f.StringVar(&f.cfg.tlsKey, "tls-key", "", "PEM private key file of --tls-cert")
}

func (f flagSet) ingest() {
	f.StringVar(&f.cfg.httpAddr, "http-addr", ":8080", "address of the HTTP API")
	f.StringVar(&f.cfg.readDatabaseURL, "read-database-url", "", "PostgreSQL URL of a read replica for the API's GET routes (default: --database-url); API keys are still checked on the primary")
	f.Int64Var(&f.cfg.maxBodyBytes, "max-body-bytes", 8<<20, "largest batch request body in bytes")
	f.Float64Var(&f.cfg.rateLimit, "rate-limit", 2000, "commands a second each API key may send on average (0: no limit)")
	f.IntVar(&f.cfg.rateBurst, "rate-burst", 4000, "most commands an API key may send at once (at least 1000, a full batch)")
	f.DurationVar(&f.cfg.produceLinger, "produce-linger", 0, "how long an idle producer waits for more records before sending (records arriving while a request is in flight go in the next one anyway)")
	f.DurationVar(&f.cfg.produceTimeout, "produce-timeout", 10*time.Second, "how long a request waits for Kafka's acknowledgement before answering 503")
}

func (f flagSet) worker() {
	f.StringVar(&f.cfg.groupID, "group-id", "txpipe-workers", "consumer group of the workers")
	f.IntVar(&f.cfg.batchSize, "batch-size", 500, "most commands applied in one transaction (1: one by one)")
	f.IntVar(&f.cfg.lanes, "lanes", 1, "transactions a worker runs at once, each over its share of the assigned partitions")
	f.DurationVar(&f.cfg.batchLinger, "batch-linger", 2*time.Millisecond, "how long a batch waits for more records after its first")
	f.DurationVar(&f.cfg.sessionTimeout, "session-timeout", 10*time.Second, "how long the group waits for a silent worker")
	f.DurationVar(&f.cfg.expiryInterval, "hold-expiry-interval", time.Second, "how often workers expire holds past their expires_at")
}

func (f flagSet) relay() {
	f.IntVar(&f.cfg.relayBatchSize, "relay-batch-size", 200, "most outbox rows read per transaction (a row holds one or more records)")
	f.DurationVar(&f.cfg.relayPollInterval, "relay-poll-interval", time.Second, "how often the relay polls when no notification arrives")
	f.StringVar(&f.cfg.relayListenURL, "relay-listen-url", "", `PostgreSQL URL of the relay's LISTEN session for the workers' wake-ups (default: --database-url); behind PgBouncer in transaction mode, PostgreSQL's own address, or "off" to poll every --relay-poll-interval`)
	f.DurationVar(&f.cfg.relayLeaseTTL, "relay-lease-ttl", 10*time.Second, "how long a relay's outbox shard leases last unrenewed: how soon other relays take over from one that stopped, paused or lost PostgreSQL")
}

// sealing is the keyring of the processes that read or write account
// metadata, which is stored and published only sealed.
func (f flagSet) sealing() {
	f.StringVar(&f.cfg.metadataKeys, "metadata-keys", "", "keys sealing account metadata at rest: comma-separated id:base64-key, the first seals, the others only open older values (txpipe metadata-key new); pass it as TXPIPE_METADATA_KEYS_FILE")
}

func (f flagSet) partitions() {
	f.IntVar(&f.cfg.partitions, "partitions", 12, "partitions of each topic created")
	f.IntVar(&f.cfg.replicationFactor, "replication-factor", 1, "replicas of each topic created")
}

// parse reads args and the environment, then validates what was defined.
func (f flagSet) parse(args []string, e *env) (*config, error) {
	if err := envflag.Parse(f.FlagSet, args, e.lookup); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, usageError{err.Error()}
	}
	if f.NArg() > 0 {
		return nil, usageError{fmt.Sprintf("unexpected arguments: %s", strings.Join(f.Args(), " "))}
	}
	var problems []string
	need := func(name string, ok bool, what string) {
		if f.Lookup(name) != nil && !ok {
			problems = append(problems, fmt.Sprintf("--%s (%s): %s", name, envflag.Name(name), what))
		}
	}
	c := f.cfg
	need("database-url", c.databaseURL != "", "is required")
	need("kafka-brokers", len(c.brokers()) > 0, "is required")
	need("kafka-sasl-password", (c.kafkaUser == "") == (c.kafkaPass == ""), "--kafka-sasl-user and --kafka-sasl-password go together")
	need("log-level", parseLevel(c.logLevel) != nil, "must be debug, info, warn or error")
	need("batch-size", c.batchSize >= 1, "must be at least 1")
	need("lanes", c.lanes >= 1, "must be at least 1")
	need("batch-linger", c.batchLinger >= 0, "must not be negative")
	need("session-timeout", c.sessionTimeout >= 6*time.Second, "must be at least 6s (the broker's group.min.session.timeout.ms)")
	need("hold-expiry-interval", c.expiryInterval > 0, "must be positive")
	need("relay-batch-size", c.relayBatchSize >= 1, "must be at least 1")
	need("relay-lease-ttl", c.relayLeaseTTL >= time.Second, "must be at least 1s")
	need("partitions", c.partitions >= 1, "must be at least 1")
	need("replication-factor", c.replicationFactor >= 1, "must be at least 1")
	need("max-body-bytes", c.maxBodyBytes >= 1024, "must be at least 1024")
	need("rate-limit", c.rateLimit >= 0, "must not be negative")
	need("tls-key", (c.tlsCert == "") == (c.tlsKey == ""), "--tls-cert and --tls-key go together")
	need("rate-burst", c.rateBurst >= 1000, "must be at least 1000, a full batch")
	if f.Lookup("metadata-keys") != nil {
		if c.metadataKeys == "" {
			need("metadata-keys", false, "is required: account metadata is stored sealed; make a key with `txpipe metadata-key new --id ID`")
		} else if k, err := sealing.Parse(c.metadataKeys); err != nil {
			need("metadata-keys", false, err.Error())
		} else {
			c.keyring = k
		}
	}
	if len(problems) > 0 {
		return nil, usageError{"invalid settings:\n  " + strings.Join(problems, "\n  ")}
	}
	return c, nil
}

func (c *config) brokers() []string {
	var bs []string
	for _, b := range strings.Split(c.kafkaBrokers, ",") {
		if b = strings.TrimSpace(b); b != "" {
			bs = append(bs, b)
		}
	}
	return bs
}

func parseLevel(s string) *slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return nil
	}
	return &l
}

func (c *config) logger(e *env) *slog.Logger { return slog.New(c.logHandler(e)) }

func (c *config) logHandler(e *env) slog.Handler {
	return slog.NewJSONHandler(e.stderr, &slog.HandlerOptions{Level: *parseLevel(c.logLevel)})
}

// openPool connects to PostgreSQL. Unless the URL sets pool_max_conns, the
// pool holds 40 connections: one per partition a worker may own, plus the
// relay, its listener and the API's reads. A URL naming several hosts
// (postgres://u:p@a:5432,b:5432/db) connects to whichever is read-write
// unless it sets target_session_attrs itself, so that after a failover new
// connections find the promoted standby.
func (c *config) openPool(ctx context.Context) (*pgxpool.Pool, error) {
	return openPool(ctx, c.databaseURL, "database-url", 40, pgconn.ValidateConnectTargetSessionAttrsReadWrite)
}

// openReadPool connects to the read replica of --read-database-url, or
// returns nil when it is not set (reads then use the primary). Unless the
// URL sets pool_max_conns, the pool holds 20 connections; naming several
// hosts, it prefers a standby unless it sets target_session_attrs.
func (c *config) openReadPool(ctx context.Context) (*pgxpool.Pool, error) {
	if c.readDatabaseURL == "" {
		return nil, nil
	}
	return openPool(ctx, c.readDatabaseURL, "read-database-url", 20, pgconn.ValidateConnectTargetSessionAttrsPreferStandby)
}

// relayListen is the relay's LISTEN connection: nil for the pool's, or
// off for none.
func (c *config) relayListen() (cfg *pgx.ConnConfig, off bool, err error) {
	switch c.relayListenURL {
	case "":
		return nil, false, nil
	case "off":
		return nil, true, nil
	}
	cc, err := pgx.ParseConfig(c.relayListenURL)
	if err != nil {
		return nil, false, fmt.Errorf("--relay-listen-url (%s) is not a valid PostgreSQL URL", envflag.Name("relay-listen-url"))
	}
	failoverReady(cc, c.relayListenURL, pgconn.ValidateConnectTargetSessionAttrsReadWrite)
	return cc, false, nil
}

// failoverReady sets what every connection to PostgreSQL needs to survive
// a failover: with several hosts in url and no target_session_attrs of its
// own, multiHost picks among them; the fence refuses an older primary;
// dial's keepalives and connectTimeout bound a vanished machine.
func failoverReady(cc *pgx.ConnConfig, url string, multiHost pgconn.ValidateConnectFunc) {
	if len(cc.Fallbacks) > 0 && !strings.Contains(url, "target_session_attrs") {
		cc.ValidateConnect = multiHost
	}
	cc.ValidateConnect = pgnode.Fence(cc.ValidateConnect)
	cc.DialFunc = dial
	if cc.ConnectTimeout == 0 {
		cc.ConnectTimeout = connectTimeout
	}
}

// dial opens connections to PostgreSQL with keepalives every 5 s after
// 10 s idle, and on Linux TCP_USER_TIMEOUT: a connection whose server's
// machine vanished (no reset, no answer) fails within about half a minute
// instead of the operating system's quarter of an hour, so a worker, the
// relay or a key lookup moves on to the promoted standby. A slow query is
// not cut: the server's kernel still acknowledges.
func dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d := net.Dialer{
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 10 * time.Second, Interval: 5 * time.Second, Count: 3},
		Control:         tcpUserTimeout(30 * time.Second),
	}
	return d.DialContext(ctx, network, addr)
}

// connectTimeout bounds each connection attempt to one host when the URL
// does not set connect_timeout, so that a primary whose machine is gone
// (no answer at all, not a refusal) costs seconds before the next host is
// tried, not the operating system's minutes.
const connectTimeout = 5 * time.Second

func openPool(ctx context.Context, url, flagName string, maxConns int32, multiHost pgconn.ValidateConnectFunc) (*pgxpool.Pool, error) {
	pc, err := pgxpool.ParseConfig(url)
	if err != nil {
		// pgx's parse errors can quote the URL, password included.
		return nil, fmt.Errorf("--%s (%s) is not a valid PostgreSQL URL", flagName, envflag.Name(flagName))
	}
	if !strings.Contains(url, "pool_max_conns") {
		pc.MaxConns = maxConns
	}
	failoverReady(pc.ConnConfig, url, multiHost)
	pc.ConnConfig.RuntimeParams["application_name"] = "txpipe"
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("open database pool: %w", err)
	}
	return pool, nil
}

// kafkaClients returns the transport (producers, fetches, admin requests)
// and the dialer (consumer group membership) for the brokers, over TLS and
// with SASL/SCRAM-SHA-512 when those are set. The transport's metadata
// lives 1 s, so requests find a new partition leader soon after an election.
func (c *config) kafkaClients() (*kafka.Transport, *kafka.Dialer, error) {
	tr := &kafka.Transport{MetadataTTL: time.Second}
	dialer := &kafka.Dialer{Timeout: 10 * time.Second, DualStack: true}
	if c.kafkaTLSCA != "" {
		pem, err := os.ReadFile(c.kafkaTLSCA)
		if err != nil {
			return nil, nil, fmt.Errorf("--kafka-tls-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, nil, fmt.Errorf("--kafka-tls-ca: no certificate in %s", c.kafkaTLSCA)
		}
		tr.TLS = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}
		dialer.TLS = tr.TLS
	}
	if c.kafkaUser != "" {
		mech, err := scram.Mechanism(scram.SHA512, c.kafkaUser, c.kafkaPass)
		if err != nil {
			return nil, nil, fmt.Errorf("SASL/SCRAM: %w", err)
		}
		tr.SASL, dialer.SASLMechanism = mech, mech
	}
	return tr, dialer, nil
}
