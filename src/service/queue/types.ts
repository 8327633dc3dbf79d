/**
 * The job queue hands each queued job to one host that reaches the job's domain. It only
 * delivers: whether the job may run is decided by its claim (pending -> running, in the store),
 * and who may write the disk by the disk lock and the fence. A dispatch delivered twice is
 * harmless: the second claim finds the job no longer pending.
 */
import type { Store } from '../store/store.js';

export interface Dispatch {
  jobId: string;
  domainId: string;
  /** The queue is done with this delivery (the job was claimed, or there was nothing to claim). */
  ack(): Promise<void>;
  /** The claim could not be made (the database was away): deliver it again shortly. */
  retry(): Promise<void>;
}

export interface JobQueue {
  readonly kind: string;
  /** Queue the job. `tx`: the transaction that creates it; where the queue lives in the database, the dispatch commits with it. */
  send(job: { id: string; domainId: string }, tx: Store, opts?: { delaySeconds?: number }): Promise<void>;
  /** Up to `n` deliveries for these domains, oldest first. */
  fetch(domainIds: readonly string[], n: number): Promise<Dispatch[]>;
  /** The domains this host serves exist as queues. */
  prepare(domainIds: readonly string[]): Promise<void>;
  start(): Promise<void>;
  stop(): Promise<void>;
}
