package httpserver

import (
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// RegisterPoolMetrics exposes the PostgreSQL pool's statistics, read at
// scrape time: connections by state, and acquisitions (count, waits, time).
// A pool that runs out shows as empty acquisitions and a rising wait.
func RegisterPoolMetrics(reg prometheus.Registerer, pool *pgxpool.Pool) error {
	gauge := func(name, help string, f func(*pgxpool.Stat) float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 { return f(pool.Stat()) })
	}
	counter := func(name, help string, f func(*pgxpool.Stat) float64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return f(pool.Stat()) })
	}
	for _, c := range []prometheus.Collector{
		gauge("txpipe_postgres_pool_connections_max", "Most connections the pool may open.", func(s *pgxpool.Stat) float64 { return float64(s.MaxConns()) }),
		gauge("txpipe_postgres_pool_connections_acquired", "Connections in use.", func(s *pgxpool.Stat) float64 { return float64(s.AcquiredConns()) }),
		gauge("txpipe_postgres_pool_connections_idle", "Open connections not in use.", func(s *pgxpool.Stat) float64 { return float64(s.IdleConns()) }),
		counter("txpipe_postgres_pool_acquires_total", "Connections acquired from the pool.", func(s *pgxpool.Stat) float64 { return float64(s.AcquireCount()) }),
		counter("txpipe_postgres_pool_empty_acquires_total", "Acquisitions that had to wait because no connection was idle.", func(s *pgxpool.Stat) float64 { return float64(s.EmptyAcquireCount()) }),
		counter("txpipe_postgres_pool_acquire_wait_seconds_total", "Time spent waiting for connections.", func(s *pgxpool.Stat) float64 { return s.AcquireDuration().Seconds() }),
	} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}
