# txpipe — make run | make test | make services | make services-down | make lint | make bench
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

GO        ?= go
BIN       := bin/txpipe
SERVICES  := scripts/services.sh
TEST_FLAGS ?= -race -count=1 -timeout 15m

.PHONY: help
help:
	@echo "make run            start Kafka + PostgreSQL if needed, migrate, create topics, run txpipe all"
	@echo "make test           start the services if needed and run every test"
	@echo "make services       start Kafka + PostgreSQL; eval \"\$$(make -s services)\" exports their settings"
	@echo "make services-down  stop them"
	@echo "make lint           gofmt and go vet"
	@echo "make bench          steady-state benchmark on a preloaded database, side by side (BENCH_QUICK=1: about 10 minutes); make bench-micro: Go benchmarks"
	@echo "make soak           the sustained 1000/s latency run for SOAK_DURATION (5m), RSS and outbox size at start and end"
	@echo "make release-schemas record docs/schemas as released: later changes must stay backward compatible with them"

.PHONY: build
build:
	$(GO) build -o $(BIN) ./cmd/txpipe
	$(GO) build -o bin/loadgen ./cmd/loadgen

.PHONY: services
services:
	@$(SERVICES) up

.PHONY: services-down
services-down:
	@$(SERVICES) down

.PHONY: run
run: build
	@eval "$$($(SERVICES) up)"; \
	$(BIN) migrate; \
	$(BIN) topics; \
	api="$${TXPIPE_HTTP_ADDR:-:8080}"; admin="$${TXPIPE_ADMIN_ADDR:-:9090}"; \
	echo "txpipe: API http://localhost:$${api##*:}/v1  metrics http://localhost:$${admin##*:}/metrics  readiness http://localhost:$${admin##*:}/readyz" >&2; \
	key="$$($(BIN) apikey create --name "dev $$(date -u +%FT%TZ)" --scopes commands:write,ledger:read | sed -n 's/^api key: //p')"; \
	echo "txpipe: development API key (every scope; txpipe apikey list|revoke manage keys): $$key" >&2; \
	echo "txpipe: try  curl -H 'Authorization: Bearer $$key' http://localhost:$${api##*:}/v1/accounts/alice" >&2; \
	echo "txpipe: Ctrl-C stops the pipeline, make services-down the services" >&2; \
	keys=.cache/dev-metadata-keys; \
	if [ ! -s "$$keys" ]; then mkdir -p .cache; (umask 077; $(BIN) metadata-key new --id dev1 > "$$keys"); fi; \
	echo "txpipe: account metadata is sealed with the development key in $$keys (TXPIPE_METADATA_KEYS_FILE)" >&2; \
	export TXPIPE_METADATA_KEYS_FILE="$${TXPIPE_METADATA_KEYS_FILE:-$$keys}"; \
	exec $(BIN) all

.PHONY: test
# Each fuzz target also fuzzes briefly (FUZZTIME); seeds and any crash it
# finds live in the package's testdata/fuzz and replay in every go test.
# FUZZTIME is a count of executions, not a duration: a duration races Go
# 1.26's fuzz coordinator at the deadline and fails with "context deadline
# exceeded" having found nothing (go.dev/issue/75804, fixed in Go 1.27).
FUZZ_TARGETS := FuzzDecodeCommand:./domain FuzzDecide:./consumers FuzzCheckPublished:./consumers/audit FuzzParse:./producers/apikey FuzzParseCursor:./consumers/ledger
FUZZTIME ?= 30000x
test:
	@scripts/install-tools.sh
	@eval "$$($(SERVICES) up)"; \
	$(GO) test $(TEST_FLAGS) ./...; \
	(cd deploy/verify && $(GO) test -count=1 ./...); \
	for t in $(FUZZ_TARGETS); do $(GO) test -run '^$$' -fuzz "^$${t%%:*}$$" -fuzztime $(FUZZTIME) "$${t#*:}"; done

# chaos: the fault test with a Kafka broker restart and a PostgreSQL crash
# added (they hit the shared services, so make test leaves them out);
# CHAOS_COMMANDS sets its length (default 4000). Then the leader-loss test on
# a three-broker cluster (scripts/kafka-cluster.sh), stopped afterwards.
.PHONY: chaos
chaos:
	@eval "$$($(SERVICES) up)"; \
	TXPIPE_CHAOS=1 TXPIPE_CHAOS_COMMANDS=$(or $(CHAOS_COMMANDS),4000) \
	$(GO) test -count=1 -timeout 60m -run 'TestFaultsLoseAndDoubleNothing' -v ./cmd/txpipe/ 2>&1 | grep -v '^\s*{'
	@$(MAKE) --no-print-directory chaos-cluster
	@$(MAKE) --no-print-directory chaos-failover

# chaos-failover: the PostgreSQL primary's machine lost under load, its
# standby promoted, with synchronous_commit on and remote_apply (nothing may
# be lost) and off (what is lost is counted and logged), each on a primary
# and standby of its own (scripts/postgres.sh on ports 5437 and 5438).
# make test runs the synchronous variant.
.PHONY: chaos-failover
chaos-failover:
	@eval "$$($(SERVICES) up)"; \
	TXPIPE_FAILOVER_MODES=$(or $(FAILOVER_MODES),on,remote_apply,off) \
	$(GO) test -count=1 -timeout 30m -run 'TestPrimaryFailoverLosesNothing' -v ./cmd/txpipe/ 2>&1 | grep -v '^\s*{'

# chaos-cluster: only the leader-loss test on a three-broker cluster, which
# is started for it and stopped afterwards (CI runs it after make test).
.PHONY: chaos-cluster
chaos-cluster:
	@eval "$$($(SERVICES) up)"; \
	scripts/kafka-cluster.sh start; \
	eval "$$(scripts/kafka-cluster.sh env)"; \
	rc=0; $(GO) test -count=1 -timeout 20m -run 'TestLeaderLossInAThreeBrokerCluster' -v ./cmd/txpipe/ 2>&1 | grep -v '^\s*{' || rc=$$?; \
	scripts/kafka-cluster.sh stop; exit $$rc

.PHONY: lint
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	cd deploy/verify && $(GO) vet ./...

# bench: the steady state first, on databases preloaded with a million
# processed commands (a template built once and cached, rebuilt when the
# migrations change): sustained latency at 1000/s over HTTP for
# BENCH_SUSTAINED (10m; 2m with BENCH_QUICK=1) and sustained throughput over
# the HTTP batch endpoint, against the targets; then naive vs txpipe vs the
# PostgreSQL and Kafka ceilings, skewed vs uniform, one worker vs three.
# Each scenario on its own copy of the preload and its own topics. The
# streaming replica is stopped first: in production it has a host of its own,
# here it would replay every write on the same two cores (the next
# `make services` or `make test` starts it again).
.PHONY: bench
bench: build
	@eval "$$($(SERVICES) up)"; scripts/postgres.sh replica-stop; \
	bin/loadgen bench --txpipe $(BIN) --out bench-results $(if $(BENCH_QUICK),--quick,) \
		$(if $(BENCH_SUSTAINED),--sustained-duration $(BENCH_SUSTAINED),)

# soak: the sustained-latency run (1000/s over HTTP on the preloaded
# database) for SOAK_DURATION (default 5m; make soak SOAK_DURATION=30m),
# with txpipe's RSS and the outbox's size at the start and the end.
SOAK_DURATION ?= 5m
.PHONY: soak
soak: build
	@eval "$$($(SERVICES) up)"; scripts/postgres.sh replica-stop; \
	bin/loadgen bench --txpipe $(BIN) --out bench-results/soak --only sustained-latency --sustained-duration $(SOAK_DURATION)

.PHONY: bench-micro
bench-micro:
	$(GO) test -run '^$$' -bench . -benchmem ./domain/...

# release-schemas: record docs/schemas as released. From then on
# TestSchemasStayBackwardCompatible refuses any change to them that would
# break a consumer (a field made required or removed, a type narrowed).
.PHONY: release-schemas
release-schemas:
	rm -rf internal/schematest/testdata/released
	mkdir -p internal/schematest/testdata/released
	cp -r docs/schemas/. internal/schematest/testdata/released/
