/**
 * PostgreSQL behind the Db interface: a node-postgres pool that reconnects by itself (each query
 * takes a live connection; dead ones are dropped), BIGINT read as numbers (sizes and times fit in
 * 2^53), `?` placeholders turned into `$n`, and driver errors that mean "no database right now"
 * turned into DbUnavailableError.
 */
import pg from 'pg';
import { classify, isUnavailable, type Db, type SqlValue } from './db.js';

const INT8_OID = 20;

function toDollar(sql: string): string {
  let n = 0;
  return sql.replace(/\?/g, () => `$${++n}`);
}

type Queryable = pg.Pool | pg.PoolClient;

export class PgDb implements Db {
  readonly dialect = 'postgres' as const;
  readonly lockRows = ' FOR UPDATE';
  readonly nowMs = '(extract(epoch from clock_timestamp()) * 1000)::bigint';
  private static readonly converted = new Map<string, string>();

  private constructor(
    private readonly q: Queryable,
    private readonly pool: pg.Pool,
    private readonly inTx = false,
  ) {}

  /** A pool on `url`; `onError` hears about connections that die while idle (a server restart). */
  static connect(url: string, opts: { applicationName: string; onError: (e: Error) => void; max?: number }): PgDb {
    const pool = new pg.Pool({
      connectionString: url,
      application_name: opts.applicationName,
      max: opts.max ?? 10,
      connectionTimeoutMillis: 5000,
      idleTimeoutMillis: 30_000,
      // A query never waits forever on a half-dead connection.
      query_timeout: 60_000,
      types: { getTypeParser: ((oid: number, format?: 'text' | 'binary') => (oid === INT8_OID ? (v: string) => Number(v) : pg.types.getTypeParser(oid, format))) as typeof pg.types.getTypeParser },
    });
    pool.on('error', opts.onError);
    return new PgDb(pool, pool);
  }

  private sql(text: string): string {
    let s = PgDb.converted.get(text);
    if (!s) {
      s = toDollar(text);
      PgDb.converted.set(text, s);
    }
    return s;
  }

  private async query<T>(text: string, params: readonly SqlValue[]): Promise<pg.QueryResult<T & pg.QueryResultRow>> {
    try {
      return await this.q.query<T & pg.QueryResultRow>(this.sql(text), params as SqlValue[]);
    } catch (e) {
      throw classify(e);
    }
  }

  async all<T>(sql: string, params: readonly SqlValue[] = []): Promise<T[]> {
    return (await this.query<T>(sql, params)).rows;
  }

  async get<T>(sql: string, params: readonly SqlValue[] = []): Promise<T | undefined> {
    return (await this.query<T>(sql, params)).rows[0];
  }

  async run(sql: string, params: readonly SqlValue[] = []): Promise<number> {
    return (await this.query(sql, params)).rowCount ?? 0;
  }

  async exec(sql: string): Promise<void> {
    try {
      await this.q.query(sql);
    } catch (e) {
      throw classify(e);
    }
  }

  async executeSql(text: string, values: unknown[]): Promise<{ rows: unknown[] }> {
    try {
      return await this.q.query(text, values);
    } catch (e) {
      throw classify(e);
    }
  }

  async transaction<T>(fn: (tx: Db) => Promise<T>): Promise<T> {
    if (this.inTx) return fn(this);
    if (this.q !== this.pool) return this.inTransaction(this.q as pg.PoolClient, fn);
    let client: pg.PoolClient;
    try {
      client = await this.pool.connect();
    } catch (e) {
      throw classify(e);
    }
    let broken = false;
    try {
      return await this.inTransaction(client, fn);
    } catch (e) {
      broken = isUnavailable(e);
      throw e;
    } finally {
      client.release(broken);
    }
  }

  private async inTransaction<T>(client: pg.PoolClient, fn: (tx: Db) => Promise<T>): Promise<T> {
    try {
      await client.query('BEGIN');
      const r = await fn(new PgDb(client, this.pool, true));
      await client.query('COMMIT');
      return r;
    } catch (e) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw classify(e);
    }
  }

  /** Cluster-wide advisory lock for the length of `fn` (migrations: one host at a time). */
  async withAdvisoryLock<T>(key: number, fn: (db: Db) => Promise<T>): Promise<T> {
    let client: pg.PoolClient;
    try {
      client = await this.pool.connect();
    } catch (e) {
      throw classify(e);
    }
    try {
      await client.query('SELECT pg_advisory_lock($1)', [key]);
      try {
        return await fn(new PgDb(client, this.pool));
      } finally {
        await client.query('SELECT pg_advisory_unlock($1)', [key]).catch(() => undefined);
      }
    } finally {
      client.release();
    }
  }

  async close(): Promise<void> {
    if (this.q === this.pool && !this.pool.ended) await this.pool.end();
  }
}
