package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/consumers/ledger"
	"github.com/txpipe/txpipe/domain"
	"github.com/txpipe/txpipe/domain/sealing"
)

// The read queries of the API (docs/api.md, Queries), measured on a copy
// of the preload: each is asked queryRequests times over HTTP, one at a
// time, with parameters drawn from the data, and its plan is written to
// query-plans.txt with EXPLAIN (ANALYZE, BUFFERS) of the SQL the API runs.

// queryRequests is how many times each query is asked.
func queryRequests(quick bool) int {
	if quick {
		return 100
	}
	return 400
}

// queryKind is one query: the path of a request, and the same question
// asked of ledger.Queries directly, for its plan.
type queryKind struct {
	name string
	path func(p queryParams) string
	ask  func(ctx context.Context, q *ledger.Queries, p queryParams) error
}

// queryParams are one request's parameters, drawn from the data.
type queryParams struct {
	account string
	version int64
	at      time.Time // within the history
	prefix  string    // of about a hundred accounts
	before  time.Time // an expiry bound
}

var queryKinds = []queryKind{
	{"transfers-by-account",
		func(p queryParams) string { return "/v1/transfers?account_id=" + p.account + "&limit=50" },
		func(ctx context.Context, q *ledger.Queries, p queryParams) error {
			_, err := q.Transfers(ctx, ledger.TransferFilter{AccountID: p.account, Limit: 50})
			return err
		}},
	{"transfers-by-account-in-a-day",
		func(p queryParams) string {
			return "/v1/transfers?account_id=" + p.account + "&since=" + rfc3339(p.at) + "&until=" + rfc3339(p.at.Add(24*time.Hour))
		},
		func(ctx context.Context, q *ledger.Queries, p queryParams) error {
			_, err := q.Transfers(ctx, ledger.TransferFilter{AccountID: p.account, Since: p.at, Until: p.at.Add(24 * time.Hour), Limit: 50})
			return err
		}},
	{"transfers-by-account-and-type",
		func(p queryParams) string { return "/v1/transfers?account_id=" + p.account + "&type=withdrawal" },
		func(ctx context.Context, q *ledger.Queries, p queryParams) error {
			_, err := q.Transfers(ctx, ledger.TransferFilter{AccountID: p.account, Kind: domain.KindWithdrawal, Limit: 50})
			return err
		}},
	{"rejected-of-account",
		func(p queryParams) string { return "/v1/transfers?account_id=" + p.account + "&status=rejected" },
		func(ctx context.Context, q *ledger.Queries, p queryParams) error {
			_, err := q.Rejections(ctx, ledger.TransferFilter{AccountID: p.account, Status: ledger.StatusRejected, Limit: 50})
			return err
		}},
	{"transfers-by-type-before",
		func(p queryParams) string { return "/v1/transfers?type=withdrawal&until=" + rfc3339(p.at) },
		func(ctx context.Context, q *ledger.Queries, p queryParams) error {
			_, err := q.Transfers(ctx, ledger.TransferFilter{Kind: domain.KindWithdrawal, Until: p.at, Limit: 50})
			return err
		}},
	{"transfer-by-reference",
		func(p queryParams) string { return "/v1/transfers?reference=order-" + p.account },
		func(ctx context.Context, q *ledger.Queries, p queryParams) error {
			_, err := q.Transfers(ctx, ledger.TransferFilter{Reference: "order-" + p.account, Limit: 50})
			return err
		}},
	{"pending-holds-of-account",
		func(p queryParams) string { return "/v1/holds?account_id=" + p.account },
		func(ctx context.Context, q *ledger.Queries, p queryParams) error {
			_, err := q.Holds(ctx, ledger.HoldFilter{AccountID: p.account, Limit: 50})
			return err
		}},
	{"holds-expiring-before",
		func(p queryParams) string { return "/v1/holds?expiring_before=" + rfc3339(p.before) },
		func(ctx context.Context, q *ledger.Queries, p queryParams) error {
			_, err := q.Holds(ctx, ledger.HoldFilter{ExpiringBefore: p.before, Limit: 50})
			return err
		}},
	{"accounts-by-prefix",
		func(p queryParams) string { return "/v1/accounts?prefix=" + p.prefix + "&currency=EUR" },
		func(ctx context.Context, q *ledger.Queries, p queryParams) error {
			_, err := q.Accounts(ctx, ledger.AccountFilter{Prefix: p.prefix, Currency: "EUR", Limit: 50})
			return err
		}},
	{"balances-by-prefix",
		func(p queryParams) string { return "/v1/balances?prefix=" + p.prefix + "&currency=EUR" },
		func(ctx context.Context, q *ledger.Queries, p queryParams) error {
			_, err := q.Balances(ctx, ledger.AccountFilter{Prefix: p.prefix, Currency: "EUR"})
			return err
		}},
	{"account-as-of-time",
		func(p queryParams) string { return "/v1/accounts/" + p.account + "?as_of=" + rfc3339(p.at) },
		func(ctx context.Context, q *ledger.Queries, p queryParams) error {
			_, err := q.AccountAsOf(ctx, p.account, p.at, -1)
			return ignoreNotFound(err)
		}},
	{"account-as-of-version",
		func(p queryParams) string {
			return "/v1/accounts/" + p.account + "?as_of_version=" + strconv.FormatInt(p.version, 10)
		},
		func(ctx context.Context, q *ledger.Queries, p queryParams) error {
			_, err := q.AccountAsOf(ctx, p.account, time.Time{}, p.version)
			return ignoreNotFound(err)
		}},
}

func rfc3339(t time.Time) string { return url.QueryEscape(t.UTC().Format(time.RFC3339Nano)) }

func ignoreNotFound(err error) error {
	if err == ledger.ErrNotFound {
		return nil
	}
	return err
}

// queryBench runs every query kind and returns one result each (P50ms,
// P99ms over its requests).
func queryBench(ctx context.Context, o benchOptions, client *kafka.Client) ([]result, error) {
	s, err := newStack(ctx, "queries", o)
	if err != nil {
		return nil, err
	}
	defer s.close(context.WithoutCancel(ctx), client)
	if _, err := s.pool.Exec(ctx, "ANALYZE"); err != nil {
		return nil, fmt.Errorf("analyze: %w", err)
	}
	drawn, err := ledger.SampleForQueries(ctx, s.pool, "EUR", 2000)
	if err != nil {
		return nil, err
	}
	transfers := drawn.Transfers
	draw, err := paramSource(drawn)
	if err != nil {
		return nil, err
	}
	ingest, err := s.start(ctx, "ingest")
	if err != nil {
		return nil, err
	}
	hc := &http.Client{Timeout: 30 * time.Second}
	n := queryRequests(o.quick)
	var out []result
	for _, k := range queryKinds {
		ss := make([]sample, 0, n)
		for range n {
			began := time.Now()
			if err := getOK(ctx, hc, "http://"+ingest.http+k.path(draw()), s.key); err != nil {
				return nil, fmt.Errorf("%s: %w", k.name, err)
			}
			ss = append(ss, newSample(began, time.Since(began), stages{}))
		}
		out = append(out, result{Scenario: "query:" + k.name, Commands: n, P50ms: ms(percentile(ss, 0.5)), P99ms: ms(percentile(ss, 0.99)),
			Note: fmt.Sprintf("%d transfers in the database", transfers)})
		fmt.Fprintf(o.log, "bench:   %-32s p50 %6.2f ms  p99 %6.2f ms\n", k.name, out[len(out)-1].P50ms, out[len(out)-1].P99ms)
	}
	keyring, err := sealing.Parse(s.sealKeys)
	if err != nil {
		return nil, err
	}
	return out, writePlans(ctx, s.dbURL, keyring, draw(), transfers, filepath.Join(o.out, "query-plans.txt"))
}

// paramSource draws request parameters from the sampled accounts and the
// span of the transfers.
func paramSource(sample ledger.QuerySample) (func() queryParams, error) {
	if len(sample.Accounts) == 0 {
		return nil, fmt.Errorf("no account to ask about")
	}
	first, last := sample.First, sample.Last
	rng := rand.New(rand.NewPCG(7, 7))
	return func() queryParams {
		i := rng.IntN(len(sample.Accounts))
		id := sample.Accounts[i]
		at := first.Add(time.Duration(rng.Int64N(int64(last.Sub(first)) + 1)))
		// acct-1234 → acct-12: acct-12 and acct-120…129 and acct-1200…1299.
		prefix := id[:min(len(id), len("acct-")+2)]
		return queryParams{account: id, version: 1 + rng.Int64N(sample.Versions[i]), at: at, prefix: prefix, before: time.Now().Add(time.Hour)}
	}, nil
}

func getOK(ctx context.Context, hc *http.Client, u, key string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusNotFound {
		return fmt.Errorf("GET %s = %d %s", u, resp.StatusCode, body)
	}
	if !json.Valid(body) {
		return fmt.Errorf("GET %s: a body that is not JSON", u)
	}
	return nil
}

// lastQuery remembers the SQL and arguments of the queries a pool runs.
type lastQuery struct {
	sql  []string
	args [][]any
}

func (l *lastQuery) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	l.sql, l.args = append(l.sql, d.SQL), append(l.args, d.Args)
	return ctx
}

func (l *lastQuery) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// writePlans asks every query once of ledger.Queries on a one-connection
// pool that records its statements, and writes each statement's EXPLAIN
// (ANALYZE, BUFFERS) to path.
func writePlans(ctx context.Context, dbURL string, keyring *sealing.Keyring, p queryParams, transfers int64, path string) error {
	cfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		return err
	}
	trace := &lastQuery{}
	cfg.ConnConfig.Tracer = trace
	cfg.MaxConns = 1
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	q := &ledger.Queries{Pool: pool, Keyring: keyring}
	var b strings.Builder
	fmt.Fprintf(&b, "Plans of the API's queries on a database of %d transfers (loadgen bench, %s).\n", transfers, time.Now().UTC().Format(time.RFC3339))
	for _, k := range queryKinds {
		trace.sql, trace.args = nil, nil
		if err := k.ask(ctx, q, p); err != nil {
			return fmt.Errorf("%s: %w", k.name, err)
		}
		recorded := len(trace.sql)
		for i := range recorded {
			rows, err := pool.Query(ctx, "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) "+trace.sql[i], trace.args[i]...)
			if err != nil {
				return fmt.Errorf("explain %s: %w", k.name, err)
			}
			lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				return fmt.Errorf("explain %s: %w", k.name, err)
			}
			fmt.Fprintf(&b, "\n== %s (statement %d of %d)\n%s\n\n%s\n", k.name, i+1, recorded, strings.Join(strings.Fields(trace.sql[i]), " "), strings.Join(lines, "\n"))
		}
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}
