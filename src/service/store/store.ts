/**
 * The service's state behind one interface, on SQLite (one host, the default) or PostgreSQL
 * (several hosts). Open it with `openStore`: it connects, migrates the schema, and hands back
 * tables as small classes. `transaction` gives the same interface bound to one transaction.
 */
import { join } from 'node:path';
import { mkdirSync } from 'node:fs';
import type { Db } from './db.js';
import { DbFatalError, isUnavailable, redactUrl } from './db.js';
import { SqliteDb } from './sqlite-db.js';
import { PgDb } from './pg-db.js';
import { migrate } from './migrations.js';
import { Disks } from './disks.js';
import { DiskPages } from './disk-pages.js';
import { Jobs } from './jobs.js';
import { Hosts } from './hosts.js';
import { Events } from './events.js';
import { Settings } from './settings.js';
import { Vms } from './vms.js';

export class Store {
  readonly disks: Disks;
  /** The disk list by pages and its totals. */
  readonly diskPages: DiskPages;
  readonly jobs: Jobs;
  readonly hosts: Hosts;
  readonly events: Events;
  readonly settings: Settings;
  readonly vms: Vms;

  constructor(readonly db: Db) {
    this.disks = new Disks(db);
    this.diskPages = new DiskPages(db);
    this.jobs = new Jobs(db);
    this.hosts = new Hosts(db);
    this.events = new Events(db);
    this.settings = new Settings(db);
    this.vms = new Vms(db);
  }

  get kind(): Db['dialect'] {
    return this.db.dialect;
  }

  transaction<T>(fn: (tx: Store) => Promise<T>): Promise<T> {
    return this.db.transaction((tx) => fn(new Store(tx)));
  }

  close(): Promise<void> {
    return this.db.close();
  }
}

export interface StoreOptions {
  /** postgres://... ; absent: SQLite in the data folder. */
  databaseUrl?: string;
  dataDir: string;
  hostName: string;
  log: (s: string) => void;
}

/** A place to describe the store in logs without its credentials. */
export function describeStore(o: Pick<StoreOptions, 'databaseUrl' | 'dataDir'>): string {
  return o.databaseUrl ? `PostgreSQL ${redactUrl(o.databaseUrl)}` : `SQLite ${join(o.dataDir, 'sparsify.db')}`;
}

/**
 * Connect and migrate. A database that cannot be used (corrupt, locked, refused, newer schema)
 * is a DbFatalError with a message fit for the operator; the credentials are never in it.
 */
export async function openStore(o: StoreOptions): Promise<{ store: Store; migrated: { from: number; to: number } }> {
  let db: Db;
  if (o.databaseUrl) {
    let lastPoolError = 0;
    db = PgDb.connect(o.databaseUrl, {
      applicationName: `sparsify:${o.hostName}`.slice(0, 63),
      onError: (e) => {
        // Idle connections die when the server restarts; the pool replaces them. Say so once in a while.
        if (Date.now() - lastPoolError > 10_000) o.log(`database connection lost (${e.message}); reconnecting on next use`);
        lastPoolError = Date.now();
      },
    });
  } else {
    mkdirSync(o.dataDir, { recursive: true });
    db = SqliteDb.open(join(o.dataDir, 'sparsify.db'));
  }
  try {
    const migrated = await migrate(db);
    return { store: new Store(db), migrated };
  } catch (e) {
    await db.close().catch(() => undefined);
    if (e instanceof DbFatalError) throw e;
    const what = describeStore(o);
    const msg = (e as Error).message.split(o.databaseUrl ?? '\u0000').join(redactUrl(o.databaseUrl ?? ''));
    throw new DbFatalError(isUnavailable(e) ? `cannot reach the database (${what}): ${msg}` : `database ${what}: ${msg}`);
  }
}
