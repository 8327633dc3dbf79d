/**
 * The one thing the store needs from a database: run parameterized SQL, in transactions. SQL is
 * written once with `?` placeholders and portable types (TEXT, INTEGER, BIGINT); SQLite and
 * PostgreSQL differ only behind this interface (placeholders, the clock, locking, notifications).
 */

export type Dialect = 'sqlite' | 'postgres';
export type SqlValue = string | number | boolean | null;

export interface Db {
  readonly dialect: Dialect;
  all<T>(sql: string, params?: readonly SqlValue[]): Promise<T[]>;
  get<T>(sql: string, params?: readonly SqlValue[]): Promise<T | undefined>;
  /** Rows changed. */
  run(sql: string, params?: readonly SqlValue[]): Promise<number>;
  /** Several statements without parameters (schema changes). */
  exec(sql: string): Promise<void>;
  /**
   * `fn` runs in one transaction on one connection: all of it commits or none. A transaction's own
   * `transaction` joins it. In SQLite it is BEGIN IMMEDIATE (one writer at a time); in PostgreSQL,
   * rows the body must hold still are read with `lockRows` (SELECT ... FOR UPDATE).
   */
  transaction<T>(fn: (tx: Db) => Promise<T>): Promise<T>;
  /** ` FOR UPDATE` where rows can be locked (PostgreSQL), empty in SQLite (the transaction already excludes writers). */
  readonly lockRows: string;
  /** SQL expression for the database's clock in milliseconds: hosts compare heartbeats on one clock. */
  readonly nowMs: string;
  /** pg-boss runs its statements through this inside our transactions (PostgreSQL only). */
  executeSql?(text: string, values: unknown[]): Promise<{ rows: unknown[] }>;
  close(): Promise<void>;
}

/**
 * The database cannot be reached (refused, restarting, connection lost). The API answers 503 for
 * it, jobs keep their state in memory and write it after the reconnect.
 */
export class DbUnavailableError extends Error {
  readonly code = 'database-unavailable';
  constructor(message: string, override readonly cause?: unknown) {
    super(message);
  }
}

/** The database file or server is unusable for a reason a retry will not fix (corrupt, wrong schema, ...). */
export class DbFatalError extends Error {}

/** SQLSTATE classes and errno codes that mean "no database right now", as opposed to a bad query. */
const UNAVAILABLE_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EHOSTUNREACH', 'EAI_AGAIN', '57P01', '57P02', '57P03', '53300', 'SQLITE_BUSY', 'SQLITE_LOCKED']);

export function isUnavailable(e: unknown): boolean {
  if (e instanceof DbUnavailableError) return true;
  if (!(e instanceof Error)) return false;
  const code = (e as { code?: unknown }).code;
  if (typeof code === 'string' && (UNAVAILABLE_CODES.has(code) || code.startsWith('08'))) return true;
  return /Connection terminated|connection timeout|timeout exceeded when trying to connect|Client has encountered a connection error|terminating connection|the database system is (starting up|shutting down)|Cannot use a pool after calling end/i.test(e.message);
}

/** Wrap driver errors that mean "unavailable" so callers can tell them from bugs. */
export function classify(e: unknown): unknown {
  if (isUnavailable(e) && !(e instanceof DbUnavailableError)) return new DbUnavailableError(`the database is unavailable: ${(e as Error).message}`, e);
  return e;
}

/** postgres://user:secret@host/db -> postgres://user:***@host/db, for anything printed or logged. */
export function redactUrl(url: string): string {
  return url.replace(/^([a-z][a-z0-9+.-]*:\/\/[^:/@]*):[^@/]*@/i, '$1:***@').replace(/([?&]password=)[^&]*/i, '$1***');
}
