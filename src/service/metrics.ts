/**
 * Prometheus metrics (prom-client), served at /metrics. Counters and histograms count what this
 * host did since it started (Prometheus sums hosts and handles restarts); gauges of jobs, disks
 * and hosts are read at scrape time and describe the whole service as this host sees it.
 */
import { Registry, Counter, Gauge, Histogram, collectDefaultMetrics } from 'prom-client';
import type { Store } from './store/store.js';
import type { Summary } from './disk-list.js';
import type { JobRecord } from './store/records.js';

export class Metrics {
  readonly registry = new Registry();
  private readonly jobDuration: Histogram<'mode' | 'outcome'>;
  private readonly jobsEnded: Counter<'outcome'>;
  private readonly reclaimed: Counter;
  private readonly givenBack: Counter<'way'>;
  private readonly deviceDiscarded: Counter;
  private readonly httpDuration: Histogram<'method' | 'route' | 'status'>;

  constructor(store: Store, summary: () => Promise<Summary>) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry, prefix: 'sparsify_' });
    this.jobDuration = new Histogram({
      name: 'sparsify_job_duration_seconds',
      help: 'Duration of the sparsify jobs this host ran, from claim to end',
      labelNames: ['mode', 'outcome'],
      buckets: [1, 5, 15, 60, 300, 900, 3600, 14400],
      registers,
    });
    this.jobsEnded = new Counter({ name: 'sparsify_jobs_ended_total', help: 'Jobs this host ended, by outcome', labelNames: ['outcome'], registers });
    this.reclaimed = new Counter({ name: 'sparsify_reclaimed_bytes_total', help: 'Bytes the jobs of this host gave back to the storage', registers });
    this.givenBack = new Counter({
      name: 'sparsify_given_back_bytes_total',
      help: 'Host bytes the jobs of this host gave back, measured, by way: holes (punched in place), truncation (of a compacted image), copy (copy-and-replace)',
      labelNames: ['way'],
      registers,
    });
    this.deviceDiscarded = new Counter({ name: 'sparsify_device_discarded_bytes_total', help: 'Bytes the in-place jobs of this host discarded on block devices (what the device gives back is its own business)', registers });
    this.httpDuration = new Histogram({
      name: 'sparsify_http_request_duration_seconds',
      help: 'API latency, by route',
      labelNames: ['method', 'route', 'status'],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers,
    });
    new Gauge({
      name: 'sparsify_jobs',
      help: 'Jobs of the whole service, by state',
      labelNames: ['state'],
      registers,
      async collect() {
        this.reset();
        for (const [state, n] of await store.jobs.countByStatus()) this.set({ state }, n);
      },
    });
    new Gauge({
      name: 'sparsify_disks',
      help: 'Disks of every domain, by status, and those that need sparsify',
      labelNames: ['status'],
      registers,
      async collect() {
        this.reset();
        const s = await summary();
        for (const [status, t] of Object.entries(s.byStatus)) this.set({ status }, t.disks);
        this.set({ status: 'needs-sparsify' }, s.needsSparsify);
      },
    });
    new Gauge({
      name: 'sparsify_reclaimable_bytes',
      help: 'Bytes the disks of every domain could give back now',
      registers,
      async collect() {
        this.set((await summary()).reclaimableBytes);
      },
    });
    new Gauge({
      name: 'sparsify_hosts',
      help: 'Hosts of the service, by status',
      labelNames: ['status'],
      registers,
      async collect() {
        this.reset();
        for (const h of await store.hosts.list()) this.inc({ status: h.status });
      },
    });
  }

  /** A job this host ran ended (`outcome`: its status, or handed-back); a finished one's measured figures are counted. */
  jobEnded(job: JobRecord, outcome: string, seconds: number): void {
    this.jobDuration.observe({ mode: job.options.mode, outcome }, seconds);
    this.jobsEnded.inc({ outcome });
    if (outcome !== 'finished') return;
    if (job.bytesReclaimed) this.reclaimed.inc(job.bytesReclaimed);
    const r = job.result;
    if (!r) {
      if (job.bytesReclaimed) this.givenBack.inc({ way: 'copy' }, job.bytesReclaimed);
      return;
    }
    if (r.isBlockDevice) {
      if (r.released && r.discarded > 0) this.deviceDiscarded.inc(r.discarded);
      return;
    }
    if (r.byHoles !== null && r.byHoles > 0) this.givenBack.inc({ way: 'holes' }, r.byHoles);
    if (r.byTruncation > 0) this.givenBack.inc({ way: 'truncation' }, r.byTruncation);
  }

  request(method: string, route: string, status: number, seconds: number): void {
    this.httpDuration.observe({ method, route, status: String(status) }, seconds);
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
