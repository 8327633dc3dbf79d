/**
 * Live updates for browsers (server-sent events). One subscription to the bus per server, whatever
 * the number of open tabs: bursts of disk and job changes are coalesced per tick and each view is
 * read once, then sent to every client. With PostgreSQL the bus carries every host's messages, so
 * any host's stream shows the progress of jobs on all hosts. A client may follow only some disks
 * (those on its screen); every client gets the totals, at most once a second while disks change.
 * `close()` ends every stream (shutdown).
 */
import type { ServerResponse } from 'node:http';
import type { Service } from '../service.js';
import type { BusMessage } from '../bus.js';

/** A stream follows at most this many disks (a few screenfuls; 300 ids of 36 characters keep the request line under Node's 16 KiB of headers). */
export const MAX_WATCHED = 300;
/** The totals go out at most this often while disks change. */
const SUMMARY_EVERY_MS = 1000;

export class LiveFeed {
  /** Each client, and the disks it follows (undefined: every disk). */
  private readonly clients = new Map<ServerResponse, Set<string> | undefined>();
  private summaryTimer: NodeJS.Timeout | undefined;
  private readonly dirtyDisks = new Set<string>();
  private readonly dirtyJobs = new Set<string>();
  private flushing: NodeJS.Immediate | undefined;
  private readonly unsubscribe: () => void;
  private readonly ping: NodeJS.Timeout;

  constructor(private readonly svc: Service) {
    this.unsubscribe = svc.bus.subscribe((m) => this.onMessage(m));
    this.ping = setInterval(() => this.broadcast(': ping\n\n'), 15_000);
  }

  /** Take over a hijacked response as an event stream. */
  attach(res: ServerResponse, disks?: Set<string>): void {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no' });
    res.write('retry: 2000\n\n');
    this.clients.set(res, disks);
    res.on('close', () => this.clients.delete(res));
  }

  private broadcast(text: string): void {
    for (const c of this.clients.keys()) c.write(text);
  }

  /** A disk's change goes to the clients that follow it. */
  private sendDisk(id: string, type: 'disk' | 'disk-removed', data: unknown): void {
    let text: string | undefined;
    for (const [c, ids] of this.clients) {
      if (ids && !ids.has(id)) continue;
      text ??= `event: ${type}\ndata: ${JSON.stringify(data)}\n\n`;
      c.write(text);
    }
  }

  /** Who follows this disk? */
  private followed(id: string): boolean {
    for (const ids of this.clients.values()) if (!ids || ids.has(id)) return true;
    return false;
  }

  /** The totals, once a second at most while disks change. */
  private summarySoon(): void {
    this.summaryTimer ??= setTimeout(() => {
      this.summaryTimer = undefined;
      if (!this.clients.size) return;
      this.svc.diskList.summary().then(
        (summary) => this.send('summary', summary),
        () => undefined,
      );
    }, SUMMARY_EVERY_MS);
  }

  private send(type: string, data: unknown): void {
    if (this.clients.size) this.broadcast(`event: ${type}\ndata: ${JSON.stringify(data)}\n\n`);
  }

  private onMessage(m: BusMessage): void {
    if (!this.clients.size) return;
    switch (m.type) {
      case 'disk':
        this.summarySoon();
        if (!this.followed(m.id)) return;
        this.dirtyDisks.add(m.id);
        break;
      case 'job':
        this.dirtyJobs.add(m.id);
        break;
      case 'progress':
        this.send('progress', { jobId: m.jobId, diskId: m.diskId, done: m.done, total: m.total });
        return;
      case 'disk-removed':
        this.summarySoon();
        this.sendDisk(m.id, 'disk-removed', { id: m.id });
        return;
      case 'event':
        void this.svc.store.events.get(m.id).then(
          (ev) => ev && this.send('event', ev),
          () => undefined,
        );
        return;
      case 'hosts':
      case 'domains':
      case 'vms':
      case 'resync':
        this.send(m.type, {});
        return;
      default:
        return;
    }
    this.flushing ??= setImmediate(() => void this.flush());
  }

  private async flush(): Promise<void> {
    this.flushing = undefined;
    const disks = [...this.dirtyDisks];
    const jobs = [...this.dirtyJobs];
    this.dirtyDisks.clear();
    this.dirtyJobs.clear();
    try {
      for (const id of disks) {
        const d = await this.svc.getDiskView(id);
        if (d) {
          const { map: _m, layers: _l, ...view } = d;
          this.sendDisk(id, 'disk', view);
        }
      }
      for (const id of jobs) {
        const j = await this.svc.getJob(id);
        if (j) this.send('job', this.svc.jobView(j));
      }
    } catch {
      // The database is away: the clients get a resync when it is back.
    }
  }

  close(): void {
    clearInterval(this.ping);
    clearTimeout(this.summaryTimer);
    if (this.flushing) clearImmediate(this.flushing);
    this.unsubscribe();
    for (const c of this.clients.keys()) c.end();
    this.clients.clear();
  }
}
