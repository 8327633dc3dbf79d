/**
 * SQLite behind the Db interface: one better-sqlite3 connection in WAL mode. Statements run
 * synchronously; a transaction may await between statements, so a queue keeps every other caller
 * out until it commits (one connection cannot hold two transactions).
 */
import type Database from 'better-sqlite3';
import { sqliteAddon } from '../../io/addons.js';
import { DbFatalError, type Db, type SqlValue } from './db.js';

type Sqlite = Database.Database;

class Gate {
  private tail: Promise<void> = Promise.resolve();
  private held = false;

  get busy(): boolean {
    return this.held;
  }

  /** Run `fn` alone: after everything queued before it, and before anything queued after. */
  async exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const prev = this.tail;
    let release!: () => void;
    this.tail = new Promise<void>((r) => (release = r));
    await prev;
    this.held = true;
    try {
      return await fn();
    } finally {
      this.held = false;
      release();
    }
  }

  /** Wait until no transaction holds the connection. */
  async idle(): Promise<void> {
    while (this.held) await this.tail;
  }
}

/** Open the file, or say clearly why it cannot be used (corrupt, not a database, locked by another process). */
export function openSqlite(path: string): Sqlite {
  // Outside the try: a missing addon is not a database fault, and says so in its own words.
  const Database = sqliteAddon();
  let db: Sqlite | undefined;
  try {
    db = new Database(path, { timeout: 5000 });
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = NORMAL');
    const check = db.pragma('quick_check', { simple: true });
    if (check !== 'ok') throw new Error(`integrity check failed: ${String(check)}`);
    return db;
  } catch (e) {
    db?.close();
    const msg = (e as Error).message;
    if (/locked|busy/i.test(msg)) throw new DbFatalError(`database ${path} is locked by another process (${msg}); is another sparsify serve using this data folder?`);
    throw new DbFatalError(`database ${path} cannot be used: ${msg}`);
  }
}

export class SqliteDb implements Db {
  readonly dialect = 'sqlite' as const;
  readonly lockRows = '';
  readonly nowMs = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)";

  private constructor(
    private readonly conn: Sqlite,
    private readonly gate: Gate,
    /** Inside a transaction: the gate is ours already. */
    private readonly inTx: boolean,
    /** Prepared statements, shared by the connection and its transactions. */
    private readonly statements: Map<string, Database.Statement>,
  ) {}

  static open(path: string): SqliteDb {
    return new SqliteDb(openSqlite(path), new Gate(), false, new Map());
  }

  private stmt(sql: string): Database.Statement {
    let s = this.statements.get(sql);
    if (!s) {
      s = this.conn.prepare(sql);
      this.statements.set(sql, s);
    }
    return s;
  }

  private async ready(): Promise<void> {
    if (!this.inTx) await this.gate.idle();
  }

  private static args(params: readonly SqlValue[]): unknown[] {
    return params.map((p) => (typeof p === 'boolean' ? (p ? 1 : 0) : p));
  }

  async all<T>(sql: string, params: readonly SqlValue[] = []): Promise<T[]> {
    await this.ready();
    return this.stmt(sql).all(...SqliteDb.args(params)) as T[];
  }

  async get<T>(sql: string, params: readonly SqlValue[] = []): Promise<T | undefined> {
    await this.ready();
    return this.stmt(sql).get(...SqliteDb.args(params)) as T | undefined;
  }

  async run(sql: string, params: readonly SqlValue[] = []): Promise<number> {
    await this.ready();
    const s = this.stmt(sql);
    return s.reader ? s.all(...SqliteDb.args(params)).length : s.run(...SqliteDb.args(params)).changes;
  }

  async exec(sql: string): Promise<void> {
    await this.ready();
    this.conn.exec(sql);
    // A schema change invalidates prepared statements.
    this.statements.clear();
  }

  async transaction<T>(fn: (tx: Db) => Promise<T>): Promise<T> {
    if (this.inTx) return fn(this);
    return this.gate.exclusive(async () => {
      const tx = new SqliteDb(this.conn, this.gate, true, this.statements);
      this.conn.exec('BEGIN IMMEDIATE');
      try {
        const r = await fn(tx);
        this.conn.exec('COMMIT');
        return r;
      } catch (e) {
        if (this.conn.inTransaction) this.conn.exec('ROLLBACK');
        throw e;
      }
    });
  }

  async close(): Promise<void> {
    await this.gate.idle();
    if (this.conn.open) this.conn.close();
  }
}
