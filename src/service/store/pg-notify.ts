/**
 * LISTEN/NOTIFY between hosts: one dedicated connection listens and reconnects by itself with a
 * growing pause when the server goes away; sending goes through the pool like any statement.
 */
import pg from 'pg';
import type { BusTransport } from '../bus.js';
import type { Db } from './db.js';

const CHANNEL = 'sparsify';
/** NOTIFY payloads must stay under 8000 bytes. */
const MAX_PAYLOAD = 7900;

export class PgNotifier implements BusTransport {
  private client: pg.Client | undefined;
  private closed = false;
  private retry: NodeJS.Timeout | undefined;
  private delayMs = 500;

  constructor(
    private readonly url: string,
    private readonly db: Db,
    private readonly log: (s: string) => void,
  ) {}

  async send(payload: string): Promise<void> {
    if (payload.length > MAX_PAYLOAD) throw new Error(`notification too large (${payload.length} bytes)`);
    await this.db.run('SELECT pg_notify(?, ?)', [CHANNEL, payload]);
  }

  async listen(onPayload: (p: string) => void, onResync: () => void): Promise<void> {
    await this.connect(onPayload, onResync, true);
  }

  private async connect(onPayload: (p: string) => void, onResync: () => void, first: boolean): Promise<void> {
    if (this.closed) return;
    const client = new pg.Client({ connectionString: this.url, application_name: 'sparsify:listen', connectionTimeoutMillis: 5000, keepAlive: true });
    const lost = (why: string) => {
      if (this.client !== client) return;
      this.client = undefined;
      client.removeAllListeners();
      client.on('error', () => undefined);
      void client.end().catch(() => undefined);
      if (this.closed) return;
      this.log(`live updates from other hosts interrupted (${why}); reconnecting`);
      this.schedule(onPayload, onResync);
    };
    client.on('error', (e) => lost(e.message));
    client.on('end', () => lost('connection ended'));
    client.on('notification', (n) => {
      if (n.channel === CHANNEL && n.payload) onPayload(n.payload);
    });
    this.client = client;
    try {
      await client.connect();
      await client.query(`LISTEN ${CHANNEL}`);
      this.delayMs = 500;
      if (!first) {
        this.log('live updates from other hosts restored');
        onResync();
      }
    } catch (e) {
      if (first) {
        this.client = undefined;
        client.removeAllListeners();
        client.on('error', () => undefined);
        await client.end().catch(() => undefined);
        throw e;
      }
      lost((e as Error).message);
    }
  }

  private schedule(onPayload: (p: string) => void, onResync: () => void): void {
    clearTimeout(this.retry);
    this.retry = setTimeout(() => void this.connect(onPayload, onResync, false), this.delayMs);
    this.delayMs = Math.min(this.delayMs * 2, 5000);
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.retry);
    const c = this.client;
    this.client = undefined;
    if (c) {
      c.removeAllListeners();
      c.on('error', () => undefined);
      await c.end().catch(() => undefined);
    }
  }
}
