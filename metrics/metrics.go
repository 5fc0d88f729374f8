// Package metrics owns snapjet's Prometheus metrics: their names, labels
// and help, one registry per process, and the HTTP handler that serves
// /metrics and /healthz. The drivers (sender, receiver, daemon, prune)
// report through the methods of Metrics; nothing here reads state itself.
//
// The label for a job is job_name, not job: Prometheus gives every scraped
// series a job label of its own (the scrape job), and a metric label of
// that name would be renamed to exported_job.
package metrics

import (
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

const ns = "snapjet"

// Results a replication ends in, for ReplicationFinished.
const (
	ResultDone   = "done"
	ResultFailed = "failed"
)

// Metrics is the set of snapjet metrics of one process. A nil *Metrics
// is valid and reports nothing, so drivers call it unconditionally.
type Metrics struct {
	reg *prometheus.Registry

	sentBytes, wireBytes, sentChunks       *prometheus.CounterVec
	appliedBytes, appliedChunks, redeliver *prometheus.CounterVec
	replications                           *prometheus.CounterVec
	running                                *prometheus.GaugeVec
	resumes, rewinds                       *prometheus.CounterVec
	duration                               *prometheus.HistogramVec
	lastSuccess                            *prometheus.GaugeVec
	streamBytes, windowBytes               *prometheus.GaugeVec
	deletions                              *prometheus.CounterVec
	lag                                    *lagCollector
}

// New registers every snapjet metric, and the Go runtime and process
// collectors (memory, CPU, file descriptors), on a fresh registry. now is
// the clock of the lag gauges (time.Now in production).
func New(now func() time.Time) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry(), lag: newLagCollector(now)}
	job, target := []string{"job_name"}, []string{"target"}
	jobTarget := []string{"job_name", "target"}
	m.sentBytes = m.counter("sent_bytes_total", "Raw send-stream bytes published to JetStream.", job)
	m.wireBytes = m.counter("sent_wire_bytes_total", "Bytes published on the wire (after compression).", job)
	m.sentChunks = m.counter("sent_chunks_total", "Chunks published to JetStream.", job)
	m.appliedBytes = m.counter("applied_bytes_total", "Raw send-stream bytes a target applied.", target)
	m.appliedChunks = m.counter("applied_chunks_total", "Chunks a target applied.", target)
	m.redeliver = m.counter("redelivered_chunks_total", "Chunks delivered again to a target that had them already (acked and skipped).", target)
	m.replications = m.counter("replications_total", "Replications that ended, by result (done or failed).", []string{"job_name", "result"})
	m.running = m.gauge("replications_running", "Replications in progress.", job)
	m.resumes = m.counter("resumes_total", "Transfers continued where they stopped instead of starting over, by side (sender or receiver).", []string{"job_name", "side"})
	m.rewinds = m.counter("rewinds_total", "Times a target's consumer was reset to replay chunks from the stream.", target)
	m.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "replication_duration_seconds",
		Help:    "Wall time of replications from the first attempt to done or failed.",
		Buckets: prometheus.ExponentialBuckets(1, 2, 16)}, job) // 1 s … 9 h
	m.reg.MustRegister(m.duration)
	m.lastSuccess = m.gauge("last_success_timestamp_seconds", "When a target last committed a replication of the job (Unix time).", jobTarget)
	m.streamBytes = m.gauge("stream_bytes", "Bytes the job's replication stream holds now.", job)
	m.windowBytes = m.gauge("window_bytes", "Bytes the job's replication stream may hold before the sender waits (the window).", job)
	m.deletions = m.counter("retention_deletions_total", "Snapshots deleted by retention, by side (source or target).", []string{"job_name", "side"})
	m.reg.MustRegister(m.lag, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *Metrics) counter(name, help string, labels []string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: name, Help: help}, labels)
	m.reg.MustRegister(c)
	return c
}

func (m *Metrics) gauge(name, help string, labels []string) *prometheus.GaugeVec {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: name, Help: help}, labels)
	m.reg.MustRegister(g)
	return g
}

// Registry is the registry the metrics live in, e.g. to add a collector.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Sent counts chunks a sender published for job.
func (m *Metrics) Sent(job string, chunks int, raw, wire int64) {
	if m == nil {
		return
	}
	m.sentChunks.WithLabelValues(job).Add(float64(chunks))
	m.sentBytes.WithLabelValues(job).Add(float64(raw))
	m.wireBytes.WithLabelValues(job).Add(float64(wire))
}

// Applied counts chunks a receiver applied to target; redelivered are the
// duplicates it skipped.
func (m *Metrics) Applied(target string, chunks int, raw int64, redelivered int) {
	if m == nil {
		return
	}
	m.appliedChunks.WithLabelValues(target).Add(float64(chunks))
	m.appliedBytes.WithLabelValues(target).Add(float64(raw))
	m.redeliver.WithLabelValues(target).Add(float64(redelivered))
}

// ReplicationStarted marks a replication of job as running.
func (m *Metrics) ReplicationStarted(job string) {
	if m == nil {
		return
	}
	m.running.WithLabelValues(job).Inc()
}

// ReplicationFinished records how a replication of job ended (ResultDone
// or ResultFailed) and how long it took.
func (m *Metrics) ReplicationFinished(job, result string, took time.Duration) {
	if m == nil {
		return
	}
	m.running.WithLabelValues(job).Dec()
	m.replications.WithLabelValues(job, result).Inc()
	m.duration.WithLabelValues(job).Observe(took.Seconds())
}

// Resumed counts a transfer that continued where it stopped; side is
// "sender" or "receiver".
func (m *Metrics) Resumed(job, side string) {
	if m == nil {
		return
	}
	m.resumes.WithLabelValues(job, side).Inc()
}

// Rewound counts a reset of target's consumer to replay chunks.
func (m *Metrics) Rewound(target string) {
	if m == nil {
		return
	}
	m.rewinds.WithLabelValues(target).Inc()
}

// Committed records that target committed job's snapshot taken at
// snapshotTime: the last success is now, and the target's lag is the age
// of that snapshot from now on.
func (m *Metrics) Committed(job, target string, snapshotTime time.Time) {
	if m == nil {
		return
	}
	m.lastSuccess.WithLabelValues(job, target).Set(float64(m.lag.now().UnixNano()) / 1e9)
	m.lag.set(job, target, snapshotTime)
}

// StreamUse reports how full job's replication stream is.
func (m *Metrics) StreamUse(job string, held, window int64) {
	if m == nil {
		return
	}
	m.streamBytes.WithLabelValues(job).Set(float64(held))
	m.windowBytes.WithLabelValues(job).Set(float64(window))
}

// Pruned counts snapshots retention deleted; side is "source" or "target".
func (m *Metrics) Pruned(job, side string, n int) {
	if m == nil {
		return
	}
	m.deletions.WithLabelValues(job, side).Add(float64(n))
}

// Handler serves /metrics, and /healthz: 200 "ok" when health returns nil
// (or is nil), otherwise 503 with the error, which must name no secret.
func (m *Metrics) Handler(health func() error) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if health != nil {
			if err := health(); err != nil {
				http.Error(w, "unhealthy: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// lagCollector computes each target's lag at scrape time: the age of the
// newest snapshot it committed, which grows while nothing arrives.
type lagCollector struct {
	desc *prometheus.Desc
	now  func() time.Time
	mu   sync.Mutex
	snap map[[2]string]time.Time
}

func newLagCollector(now func() time.Time) *lagCollector {
	return &lagCollector{
		desc: prometheus.NewDesc(ns+"_lag_seconds", "Age of the newest snapshot a target committed for the job.", []string{"job_name", "target"}, nil),
		now:  now, snap: map[[2]string]time.Time{},
	}
}

func (c *lagCollector) set(job, target string, t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.snap[[2]string{job, target}] = t
}

func (c *lagCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *lagCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	for k, t := range c.snap {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, now.Sub(t).Seconds(), k[0], k[1])
	}
}
