/**
 * Takes deliveries from the queue while this host has room: at most `capacity` jobs at once,
 * only for domains reachable here. It asks the queue when a slot frees, when any host says a job
 * was queued, and every few seconds in case such a word was lost (the database was away).
 */
import type { Bus } from '../bus.js';
import type { Logger } from '../logging.js';
import type { Dispatch, JobQueue } from './types.js';

const SAFETY_POLL_MS = 2000;

export class Dispatcher {
  private running = 0;
  private cycling = false;
  private again = false;
  private stopped = true;
  private timer: NodeJS.Timeout | undefined;
  private unsubscribe: (() => void) | undefined;

  constructor(
    private readonly queue: JobQueue,
    private readonly capacity: number,
    private readonly reachableDomains: () => string[],
    private readonly run: (d: Dispatch) => Promise<void>,
    private readonly bus: Bus,
    private readonly log: Logger,
  ) {}

  get active(): number {
    return this.running;
  }

  start(): void {
    this.stopped = false;
    this.unsubscribe = this.bus.subscribe((m) => {
      if (m.type === 'queued' || m.type === 'resync') this.wake();
    });
    this.timer = setInterval(() => this.wake(), SAFETY_POLL_MS);
    this.wake();
  }

  /** Stop taking deliveries (running jobs are the worker's to stop). */
  stop(): void {
    this.stopped = true;
    clearInterval(this.timer);
    this.unsubscribe?.();
  }

  wake(): void {
    if (this.stopped) return;
    if (this.cycling) {
      this.again = true;
      return;
    }
    this.cycling = true;
    void this.cycle()
      .catch((e: Error) => this.log.warn(`could not take jobs from the queue: ${e.message}`))
      .finally(() => {
        this.cycling = false;
        if (this.again) {
          this.again = false;
          this.wake();
        }
      });
  }

  private async cycle(): Promise<void> {
    while (!this.stopped && this.running < this.capacity) {
      const domains = this.reachableDomains();
      if (!domains.length) return;
      const got = await this.queue.fetch(domains, this.capacity - this.running);
      if (!got.length || this.stopped) return;
      for (const d of got) {
        this.running++;
        void this.run(d)
          .catch((e: Error) => this.log.error(`job ${d.jobId}: ${e.message}`))
          .finally(() => {
            this.running--;
            this.wake();
          });
      }
    }
  }
}
