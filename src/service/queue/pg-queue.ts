/**
 * The cluster's queue: pg-boss on the shared PostgreSQL, one queue per storage domain, so a host
 * takes only jobs of domains it has mounted. pg-boss owns delivery: a row fetched with SKIP LOCKED
 * goes to exactly one host, and a delivery a host took and never acknowledged (it died in between)
 * expires and is delivered again. Deliveries are acknowledged as soon as the job is claimed: from
 * then on the job row, its attempt number and the disk lock say who runs it.
 */
import PgBoss from 'pg-boss';
import type { Store } from '../store/store.js';
import type { Db } from '../store/db.js';
import { classify } from '../store/db.js';
import { PgDb } from '../store/pg-db.js';
import type { Dispatch, JobQueue } from './types.js';

/** Arbitrary, fixed: hosts starting together set up pg-boss and its queues one at a time (else they deadlock on its partitions). */
const SETUP_LOCK = 0x5350_5142;

/** A delivery taken and not acknowledged within this time is delivered again. */
const DELIVERY_TIMEOUT_S = 30;

export const queueName = (domainId: string): string => `sparsify-domain-${domainId}`;

function bossDb(db: Db): PgBoss.Db {
  if (!db.executeSql) throw new Error('the job queue needs PostgreSQL');
  return { executeSql: (text, values) => db.executeSql!(text, values) };
}

export class PgBossQueue implements JobQueue {
  readonly kind = 'pg-boss';
  private readonly boss: PgBoss;
  private readonly db: PgDb;
  private readonly prepared = new Set<string>();
  /** Round-robin start, so one busy domain does not starve the others. */
  private turn = 0;

  constructor(store: Store, onError: (e: Error) => void) {
    if (!(store.db instanceof PgDb)) throw new Error('the pg-boss queue needs PostgreSQL');
    this.db = store.db;
    this.boss = new PgBoss({
      db: bossDb(store.db),
      schema: 'pgboss',
      supervise: true,
      schedule: false,
      maintenanceIntervalSeconds: 15,
      migrate: true,
    });
    this.boss.on('error', (e) => onError(classify(e) as Error));
  }

  async start(): Promise<void> {
    await this.db.withAdvisoryLock(SETUP_LOCK, () => this.boss.start());
  }

  async prepare(domainIds: readonly string[]): Promise<void> {
    const missing = domainIds.filter((id) => !this.prepared.has(id));
    if (!missing.length) return;
    await this.db.withAdvisoryLock(SETUP_LOCK, async () => {
      for (const id of missing) {
        // Idempotent: hosts attaching the same domain agree on one queue.
        if (!(await this.boss.getQueue(queueName(id)))) await this.boss.createQueue(queueName(id), { name: queueName(id), policy: 'standard', retryLimit: 100_000, retryDelay: 1, expireInSeconds: DELIVERY_TIMEOUT_S });
        this.prepared.add(id);
      }
    });
  }

  async send(job: { id: string; domainId: string }, tx: Store, opts: { delaySeconds?: number } = {}): Promise<void> {
    if (!this.prepared.has(job.domainId)) {
      // A domain this host does not mount: its queue was made by the hosts that do.
      const exists = await this.boss.getQueue(queueName(job.domainId));
      if (!exists) await this.prepare([job.domainId]);
      else this.prepared.add(job.domainId);
    }
    await this.boss.send(queueName(job.domainId), { jobId: job.id }, { db: bossDb(tx.db), ...(opts.delaySeconds ? { startAfter: opts.delaySeconds } : {}) });
  }

  async fetch(domainIds: readonly string[], n: number): Promise<Dispatch[]> {
    const out: Dispatch[] = [];
    if (!domainIds.length || n <= 0) return out;
    const start = this.turn++ % domainIds.length;
    for (let k = 0; k < domainIds.length && out.length < n; k++) {
      const domainId = domainIds[(start + k) % domainIds.length]!;
      const name = queueName(domainId);
      if (!this.prepared.has(domainId)) continue;
      // pg-boss's fetch answers [] when the database is away; the next wake-up tries again.
      const jobs = await this.boss.fetch<{ jobId: string }>(name, { batchSize: n - out.length });
      for (const j of jobs ?? []) {
        out.push({
          jobId: j.data.jobId,
          domainId,
          ack: async () => void (await this.boss.complete(name, j.id)),
          // Failed deliveries come back after the queue's retry delay; if even this fails, after the delivery timeout.
          retry: async () => void (await this.boss.fail(name, j.id, { reason: 'claim failed' }).catch(() => undefined)),
        });
      }
    }
    return out;
  }

  async stop(): Promise<void> {
    // Our deliveries are acknowledged at claim; none is left in flight to wait for.
    await this.boss.stop({ graceful: false, close: false, wait: true, timeout: 1000 }).catch(() => undefined);
  }
}
