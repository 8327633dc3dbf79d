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
  /** Local only: the link to other hosts was down and is back; whatever was missed must be re-read. */
  | { type: 'resync' };

/** Carries messages to the other hosts. */
export interface BusTransport {
  send(payload: string): Promise<void>;
  /** Start delivering other hosts' payloads; `onResync` after every reconnect. */
  listen(onPayload: (payload: string) => void, onResync: () => void): Promise<void>;
  close(): Promise<void>;
}

export class Bus {
  private readonly ee = new EventEmitter();

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
        let m: { o?: string; m?: BusMessage };
        try {
          m = JSON.parse(payload) as typeof m;
        } catch {
          return;
        }
        if (m.o !== this.origin && m.m) this.ee.emit('message', m.m);
      },
      () => this.ee.emit('message', { type: 'resync' } satisfies BusMessage),
    );
  }

  publish(m: BusMessage): void {
    this.ee.emit('message', m);
    if (this.transport && m.type !== 'resync') {
      // Lost while the database is away: the cancel flag, the job rows and the resync cover it.
      this.transport.send(JSON.stringify({ o: this.origin, m })).catch((e: Error) => this.log(`could not notify other hosts: ${e.message}`));
    }
  }

  subscribe(fn: (m: BusMessage) => void): () => void {
    this.ee.on('message', fn);
    return () => this.ee.off('message', fn);
  }

  async close(): Promise<void> {
    await this.transport?.close();
  }
}
