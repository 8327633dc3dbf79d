/**
 * Notifications between the parts of the service, and between hosts: a disk or job changed, a
 * job made progress, a cancel was asked for, a job was queued. Messages are small (ids and
 * numbers; readers fetch what they show), delivered at once in this process and, with
 * PostgreSQL, to every other host through LISTEN/NOTIFY.
 */
import { EventEmitter } from 'node:events';

export type BusMessage =
  | { type: 'disk'; id: string }
  | { type: 'disk-removed'; id: string }
  | { type: 'job'; id: string }
  | { type: 'progress'; jobId: string; diskId: string; done: number; total: number }
  | { type: 'event'; id: number }
  | { type: 'cancel'; jobId: string }
  | { type: 'queued'; domainId: string }
  | { type: 'rescan' }
  | { type: 'hosts' }
  | { type: 'policy' }
  /** A storage domain's settings changed (its compaction). */
  | { type: 'domains' }
  /** Some host's VMs changed (came, went, changed state or disks). */
  | { type: 'vms' }
  /** Every host: read your libvirt now. */
  | { type: 'vms-refresh' }
  /** Local only: the link to other hosts was down and is back; whatever was missed must be re-read. */
  | { type: 'resync' };

/** Carries messages to the other hosts. */
export interface BusTransport {
  send(payload: string): Promise<void>;
  /** Start delivering other hosts' payloads; `onResync` after every reconnect. */
  listen(onPayload: (payload: string) => void, onResync: () => void): Promise<void>;
  close(): Promise<void>;
}

/** Messages to other hosts wait this long to travel together in one notification. */
const BATCH_MS = 20;
/** Under PostgreSQL's 8,000-byte limit for a notification. */
const MAX_PAYLOAD = 7000;

/** One message per disk, job or job's progress in a batch: the latest says all. */
function batchKey(m: BusMessage): string | undefined {
  if (m.type === 'disk' || m.type === 'job' || m.type === 'disk-removed') return `${m.type}:${m.id}`;
  if (m.type === 'progress') return `progress:${m.jobId}`;
  if (m.type === 'queued') return `queued:${m.domainId}`;
  if (m.type === 'hosts' || m.type === 'domains' || m.type === 'policy' || m.type === 'rescan' || m.type === 'vms' || m.type === 'vms-refresh') return m.type;
  return undefined;
}

export class Bus {
  private readonly ee = new EventEmitter();
  private readonly outbox = new Map<string, BusMessage>();
  private flushTimer: NodeJS.Timeout | undefined;
  private seq = 0;

  constructor(
    /** This process: its own messages come back through the transport and are dropped. */
    private readonly origin: string,
    private readonly transport?: BusTransport,
    private readonly log: (s: string) => void = () => undefined,
  ) {
    // Every open browser tab is one listener.
    this.ee.setMaxListeners(0);
  }

  async start(): Promise<void> {
    await this.transport?.listen(
      (payload) => {
        let m: { o?: string; ms?: BusMessage[] };
        try {
          m = JSON.parse(payload) as typeof m;
        } catch {
          return;
        }
        if (m.o !== this.origin) for (const x of m.ms ?? []) this.ee.emit('message', x, true);
      },
      () => this.ee.emit('message', { type: 'resync' } satisfies BusMessage),
    );
  }

  publish(m: BusMessage): void {
    this.ee.emit('message', m, false);
    if (!this.transport || m.type === 'resync') return;
    this.outbox.set(batchKey(m) ?? `${m.type}:${this.seq++}`, m);
    this.flushTimer ??= setTimeout(() => void this.flush(), BATCH_MS);
  }

  /** Send what waits in as few notifications as fit. Lost while the database is away: the cancel flag, the job rows and the resync cover it. */
  private flush(): Promise<unknown> {
    this.flushTimer = undefined;
    const sent: Array<Promise<void>> = [];
    const all = [...this.outbox.values()];
    this.outbox.clear();
    let batch: BusMessage[] = [];
    let size = 0;
    const send = () => {
      if (!batch.length) return;
      sent.push(this.transport!.send(JSON.stringify({ o: this.origin, ms: batch })).catch((e: Error) => this.log(`could not notify other hosts: ${e.message}`)));
      batch = [];
      size = 0;
    };
    for (const m of all) {
      const len = JSON.stringify(m).length + 1;
      if (size + len > MAX_PAYLOAD) send();
      batch.push(m);
      size += len;
    }
    send();
    return Promise.allSettled(sent);
  }

  /** `fn` hears every message; `remote` says it came from another host (this host's come at once, in order). */
  subscribe(fn: (m: BusMessage, remote: boolean) => void): () => void {
    this.ee.on('message', fn);
    return () => this.ee.off('message', fn);
  }

  async close(): Promise<void> {
    clearTimeout(this.flushTimer);
    await this.flush();
    await this.transport?.close();
  }
}
