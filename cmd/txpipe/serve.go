package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/segmentio/kafka-go"
	"golang.org/x/sync/errgroup"

	"github.com/txpipe/txpipe/consumers"
	"github.com/txpipe/txpipe/consumers/ledger"
	"github.com/txpipe/txpipe/internal/httpserver"
	"github.com/txpipe/txpipe/internal/kafkaadmin"
	"github.com/txpipe/txpipe/internal/kafkawriter"
	"github.com/txpipe/txpipe/internal/pgnode"
	"github.com/txpipe/txpipe/migrations"
	"github.com/txpipe/txpipe/outbox"
	"github.com/txpipe/txpipe/producers"
	"github.com/txpipe/txpipe/producers/apikey"
)

func runMigrate(ctx context.Context, args []string, e *env) error {
	fs := newFlagSet("migrate", e)
	fs.database()
	fs.logging()
	cfg, err := fs.parse(args, e)
	if err != nil {
		return err
	}
	log := cfg.logger(e)
	pool, err := cfg.openPool(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	n, err := migrations.Up(ctx, pool, log)
	if err != nil {
		return err
	}
	log.Info("database is up to date", "applied", n)
	return nil
}

func runTopics(ctx context.Context, args []string, e *env) error {
	fs := newFlagSet("topics", e)
	fs.kafka()
	fs.topics()
	fs.partitions()
	fs.logging()
	cfg, err := fs.parse(args, e)
	if err != nil {
		return err
	}
	log := cfg.logger(e)
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	transport, _, err := cfg.kafkaClients()
	if err != nil {
		return err
	}
	defer transport.CloseIdleConnections()
	client := &kafka.Client{Addr: kafka.TCP(cfg.brokers()...), Timeout: 10 * time.Second, Transport: transport}
	configs := map[string]string{}
	if cfg.replicationFactor >= 3 {
		configs["min.insync.replicas"] = "2"
	}
	var topics []kafkaadmin.Topic
	for _, name := range []string{cfg.commandsTopic, cfg.eventsTopic, cfg.postingsTopic, cfg.balancesTopic, cfg.dlqTopic} {
		if name == "" {
			continue // --balances-topic "": none
		}
		c := maps.Clone(configs)
		if name == cfg.balancesTopic {
			c["cleanup.policy"] = "compact" // keeps each account's latest record
		}
		topics = append(topics, kafkaadmin.Topic{Name: name, Partitions: cfg.partitions, ReplicationFactor: cfg.replicationFactor, Configs: c})
	}
	if err := kafkaadmin.EnsureTopics(ctx, client, topics); err != nil {
		return err
	}
	log.Info("topics ready", "topics", len(topics), "partitions", cfg.partitions, "replication_factor", cfg.replicationFactor)
	return nil
}

// runServe runs the long-lived roles: ingest, worker, relay, or all three.
// They share one registry, one admin server and one database pool; when any
// of them fails, the others are stopped and the error is returned.
func runServe(ctx context.Context, role string, args []string, e *env) error {
	has := func(r string) bool { return role == r || role == "all" }
	fs := newFlagSet(role, e)
	fs.database()
	fs.kafka()
	fs.topics()
	fs.admin()
	fs.logging()
	if has("ingest") {
		fs.ingest()
	}
	if has("ingest") || has("worker") {
		fs.sealing()
	}
	if has("worker") {
		fs.worker()
	}
	if has("relay") {
		fs.relay()
	}
	cfg, err := fs.parse(args, e)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	status := httpserver.NewStatus(reg, statusSeries()...)
	log := slog.New(status.LogHandler(cfg.logHandler(e))).With("role", role)
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	pool, err := cfg.openPool(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := checkSchema(ctx, pool, log); err != nil {
		return err
	}
	if err := httpserver.RegisterPoolMetrics(reg, pool); err != nil {
		return err
	}
	for _, panel := range offsetPanels(pool, cfg.commandsTopic) {
		status.AddPanel(panel)
	}
	tlsConfig, err := cfg.serverTLS()
	if err != nil {
		return err
	}
	brokers := cfg.brokers()
	// One connection pool for the process's clients and writers, closed on
	// the way out so no kafka-go goroutine outlives the run. Its metadata
	// (which broker leads which partition) lives 1 s instead of 6 s, so
	// produce and fetch requests find a new leader soon after an election.
	transport, dialer, err := cfg.kafkaClients()
	if err != nil {
		return err
	}
	defer transport.CloseIdleConnections()
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 5 * time.Second, Transport: transport}
	auth := apikey.NewAuthenticator(pool)
	node, err := pgnode.NewWatcher(pool, reg, log)
	if err != nil {
		return err
	}
	status.AddPanel(node.Panel())
	checks := []httpserver.Check{
		// An ingest alone needs PostgreSQL only for keys and reads: through
		// a gap in the database (a failover) it still accepts commands into
		// Kafka for the keys it read lately, so it stays ready while it has
		// read one within apikey.StaleGrace (docs/operations.md, failover).
		{Name: "postgres", Fn: func(ctx context.Context) error { return pool.Ping(ctx) }, Detail: node.Detail,
			Optional: func() bool {
				return has("ingest") && !has("worker") && !has("relay") && auth.ReadWithin(apikey.StaleGrace)
			}},
		{Name: "kafka", Fn: func(ctx context.Context) error { return kafkaadmin.Ping(ctx, client) }},
	}

	// Build every part first and start them together at the end, so that a
	// failure half-way leaves nothing running without an owner.
	runners := []func(context.Context) error{node.Run}
	var closers []func() error
	defer func() {
		for _, c := range closers {
			if err := c(); err != nil {
				log.Warn("close", "err", err)
			}
		}
	}()

	if has("ingest") {
		w := kafkawriter.New(kafkawriter.Options{Brokers: brokers, Transport: transport, Linger: cfg.produceLinger})
		closers = append(closers, w.Close)
		if err := reg.Register(kafkawriter.NewStatsCollector(w, "ingest")); err != nil {
			return err
		}
		// Every read is bounded (ledger.ReadTimeout): no query string can
		// hold a connection longer.
		reads := producers.Ledger(&ledger.Queries{Pool: pool, Keyring: cfg.keyring, Timeout: ledger.ReadTimeout})
		var primary producers.Ledger
		replica, err := cfg.openReadPool(ctx)
		if err != nil {
			return err
		}
		if replica != nil {
			closers = append(closers, func() error { replica.Close(); return nil })
			// Not a readiness check: a replica down must not take the API
			// out of service; its GETs answer 503 until it is back.
			reads, primary = &ledger.Queries{Pool: replica, Keyring: cfg.keyring, Timeout: ledger.ReadTimeout}, reads
		}
		api, err := producers.NewAPI(producers.APIOptions{
			Producer:       producers.NewProducer(w, cfg.commandsTopic),
			Auth:           auth,
			RateLimit:      cfg.rateLimit,
			RateBurst:      cfg.rateBurst,
			Ledger:         reads,
			Primary:        primary,
			MaxBodyBytes:   cfg.maxBodyBytes,
			ProduceTimeout: cfg.produceTimeout,
			Registerer:     reg,
			Log:            log,
		})
		if err != nil {
			return err
		}
		srv := &http.Server{
			Handler:           api.Handler(),
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       30 * time.Second,
			WriteTimeout:      30 * time.Second,
			IdleTimeout:       2 * time.Minute,
			MaxHeaderBytes:    64 << 10,
		}
		ln, err := listen(cfg.httpAddr, "api", e, tlsConfig)
		if err != nil {
			return err
		}
		closers = append(closers, ignoreClosed(ln.Close))
		log.Info("api listening", "addr", ln.Addr().String())
		runners = append(runners, func(ctx context.Context) error { return httpserver.Run(ctx, srv, ln, cfg.shutdownTimeout) })
	}
	if has("worker") {
		wk, err := consumers.New(consumers.Options{
			Pool:           pool,
			Brokers:        brokers,
			Transport:      transport,
			Dialer:         dialer,
			GroupID:        cfg.groupID,
			CommandsTopic:  cfg.commandsTopic,
			EventsTopic:    cfg.eventsTopic,
			PostingsTopic:  cfg.postingsTopic,
			BalancesTopic:  cfg.balancesTopic,
			DLQTopic:       cfg.dlqTopic,
			BatchSize:      cfg.batchSize,
			Lanes:          cfg.lanes,
			BatchLinger:    cfg.batchLinger,
			SessionTimeout: cfg.sessionTimeout,
			ExpiryInterval: cfg.expiryInterval,
			Clock:          e.clock,
			Keyring:        cfg.keyring,
			Scopes:         apikey.NewAccountScopes(pool),
			Registerer:     reg,
			Log:            log,
		})
		if err != nil {
			return err
		}
		checks = append(checks, httpserver.Check{Name: "worker", Fn: wk.Ready})
		runners = append(runners, wk.Run)
	}
	if has("relay") {
		w := kafkawriter.New(kafkawriter.Options{Brokers: brokers, Transport: transport})
		closers = append(closers, w.Close)
		if err := reg.Register(kafkawriter.NewStatsCollector(w, "relay")); err != nil {
			return err
		}
		listen, noListen, err := cfg.relayListen()
		if err != nil {
			return err
		}
		rl, err := outbox.NewRelay(outbox.RelayOptions{
			Pool:         pool,
			Listen:       listen,
			NoListen:     noListen,
			Publisher:    w,
			BatchSize:    cfg.relayBatchSize,
			PollInterval: cfg.relayPollInterval,
			LeaseTTL:     cfg.relayLeaseTTL,
			Registerer:   reg,
			Log:          log,
		})
		if err != nil {
			return err
		}
		checks = append(checks, httpserver.Check{Name: "relay", Fn: rl.Ready})
		runners = append(runners, rl.Run)
	}

	adminLn, err := listen(cfg.adminAddr, "admin", e, tlsConfig)
	if err != nil {
		return err
	}
	log.Info("admin listening", "addr", adminLn.Addr().String(), "paths", "/metrics /healthz /readyz /status")
	admin := &http.Server{Handler: httpserver.AdminHandler(reg, checks, status), ReadHeaderTimeout: 5 * time.Second}
	runners = append(runners, func(ctx context.Context) error { return httpserver.Run(ctx, admin, adminLn, cfg.shutdownTimeout) }, status.Run)

	g, ctx := errgroup.WithContext(ctx)
	for _, r := range runners {
		g.Go(func() error { return r(ctx) })
	}
	err = g.Wait()
	log.Info("stopped", "err", err)
	return err
}

// statusSeries are the figures /status follows, named by the packages
// whose metrics they are.
func statusSeries() []httpserver.Series {
	return []httpserver.Series{
		{Name: "commands accepted /s", Family: producers.MetricCommandsAccepted, Rate: true},
		{Name: "commands processed /s", Family: consumers.MetricCommands, Rate: true},
		{Name: "records published /s", Family: outbox.MetricPublished, Rate: true},
		{Name: "consumer lag (records)", Family: consumers.MetricLag},
		{Name: "outbox backlog (records)", Family: outbox.MetricPendingRows},
		{Name: "oldest outbox record (s)", Family: outbox.MetricOldestPendingAge},
		{Name: fmt.Sprintf("outbox shards held (of %d)", outbox.Shards), Family: outbox.MetricShardsOwned},
		{Name: "dead letters /s", Family: consumers.MetricCommands, Label: "outcome", Value: consumers.OutcomeDLQ, Rate: true},
	}
}

// checkSchema refuses to start against a database whose migrations are not
// exactly this binary's: one a newer txpipe applied (this code could write
// what the newer schema does not expect), or one of ours not applied yet
// (txpipe migrate). A database it cannot reach now is not a reason to
// refuse: the process starts unready, as it would if the database went
// away later, and the check is left to the next start.
func checkSchema(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger) error {
	// A host that drops packets must not hold the start (and the admin
	// listener the probes need) for the operating system's connect timeout.
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err := migrations.Check(ctx, pool)
	var pgErr *pgconn.PgError
	switch {
	case err == nil:
		return nil
	case errors.Is(err, migrations.ErrSchemaAhead), errors.Is(err, migrations.ErrSchemaBehind), errors.Is(err, migrations.ErrSchemaDiverged):
		return err
	case errors.As(err, &pgErr) && pgErr.Code == pgerrcode.UndefinedTable:
		return errors.New("the database has no txpipe schema: run txpipe migrate")
	default:
		log.Warn("could not check the database's schema version at start; starting anyway", "err", err)
		return nil
	}
}

// ignoreClosed adapts a listener's Close for the closers list: once its
// server ran, the listener is closed already, which is not an error.
func ignoreClosed(close func() error) func() error {
	return func() error {
		if err := close(); err != nil && !errors.Is(err, net.ErrClosed) {
			return err
		}
		return nil
	}
}

func listen(addr, name string, e *env, tlsConfig *tls.Config) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen for %s on %s: %w", name, addr, err)
	}
	if tlsConfig != nil {
		ln = tls.NewListener(ln, tlsConfig)
	}
	if e.onListen != nil {
		e.onListen(name, ln.Addr().String())
	}
	return ln, nil
}

// serverTLS is the TLS configuration of the API and admin servers, or nil
// when they serve plain HTTP. The certificate is read once, at start.
func (c *config) serverTLS() (*tls.Config, error) {
	if c.tlsCert == "" {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(c.tlsCert, c.tlsKey)
	if err != nil {
		return nil, fmt.Errorf("load --tls-cert and --tls-key: %w", err)
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}}, nil
}
