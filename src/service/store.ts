/**
 * Persistent state of the service: disks seen in the domains, jobs, events and settings. `Store`
 * is the interface the rest of the service uses; `SqliteStore` keeps it in one SQLite file (WAL),
 * synchronously, so a check-then-lock runs as one transaction with no await in between.
 */
import Database from 'better-sqlite3';
import type { DiskMapJson } from '../analyze/report.js';
import type { SparsifyMode } from './config.js';

export type DiskHealth = 'ok' | 'illegal';
export type Allocation = 'sparse' | 'preallocated';

export interface DiskRecord {
  id: string;
  /** Index of the domain in the configuration, and the path relative to it. */
  domain: number;
  rel: string;
  name: string;
  dev: number;
  ino: number;
  size: number;
  mtimeMs: number;
  ctimeMs: number;
  format: string | null;
  virtualSize: number | null;
  /** Host bytes of the file (st_blocks * 512). */
  actualSize: number;
  /** Bytes of the file that SEEK_DATA reports as data (fallocated but unwritten space is not). */
  hostDataBytes: number;
  /** Real paths of the chain, top first. */
  chain: string[];
  backingId: string | null;
  snapshots: number;
  health: DiskHealth;
  error: string | null;
  /** Set by the user; null: detected. */
  allocationOverride: Allocation | null;
  analysis: DiskMapJson | null;
  /** Stat key the analysis was made for; a different key means it is stale. */
  analysisKey: string | null;
  analysisError: string | null;
  analyzedAt: number | null;
  lockedBy: string | null;
  present: boolean;
  firstSeen: number;
  lastSeen: number;
}

export type JobStatus = 'pending' | 'running' | 'finished' | 'failed' | 'cancelled';
export type StepName = 'validating' | 'executing' | 'finalizing';

export interface JobStep {
  name: StepName;
  status: 'pending' | 'running' | 'finished' | 'failed' | 'cancelled';
  startedAt: number | null;
  endedAt: number | null;
  /** Bytes done and planned, from the engine (executing) */
  done: number;
  total: number;
  detail?: string;
}

export interface JobOptions {
  mode: SparsifyMode;
  ignore: string[];
  zero: string[];
}

export interface JobRecord {
  id: string;
  diskId: string;
  diskName: string;
  options: JobOptions;
  status: JobStatus;
  steps: JobStep[];
  origin: 'api' | 'schedule';
  createdAt: number;
  startedAt: number | null;
  endedAt: number | null;
  attempts: number;
  actualBefore: number | null;
  actualAfter: number | null;
  bytesReclaimed: number | null;
  error: string | null;
  warnings: string[];
}

export type EventType = 'job-started' | 'job-succeeded' | 'job-failed' | 'job-cancelled' | 'job-restarted' | 'disk-added' | 'disk-removed' | 'disk-illegal' | 'service';

export interface EventRecord {
  id: number;
  time: number;
  severity: 'info' | 'warning' | 'error';
  type: EventType;
  diskId: string | null;
  jobId: string | null;
  message: string;
}

export interface Store {
  listDisks(includeMissing?: boolean): DiskRecord[];
  getDisk(id: string): DiskRecord | undefined;
  findDisk(domain: number, rel: string): DiskRecord | undefined;
  findDiskByInode(dev: number, ino: number): DiskRecord | undefined;
  putDisk(d: DiskRecord): void;
  /** Lock the disk for a job if nobody holds it; false when it is taken. */
  lockDisk(diskId: string, jobId: string): boolean;
  unlockDisk(diskId: string, jobId: string): void;
  putJob(j: JobRecord): void;
  getJob(id: string): JobRecord | undefined;
  listJobs(opts?: { status?: JobStatus[]; diskId?: string; limit?: number }): JobRecord[];
  addEvent(e: Omit<EventRecord, 'id' | 'time'>): EventRecord;
  listEvents(opts?: { afterId?: number; limit?: number }): EventRecord[];
  getSetting(key: string): string | undefined;
  setSetting(key: string, value: string): void;
  transaction<T>(fn: () => T): T;
  close(): void;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS disks (
  id TEXT PRIMARY KEY,
  domain INTEGER NOT NULL,
  rel TEXT NOT NULL,
  dev INTEGER NOT NULL,
  ino INTEGER NOT NULL,
  present INTEGER NOT NULL,
  locked_by TEXT,
  data TEXT NOT NULL,
  UNIQUE (domain, rel)
);
CREATE INDEX IF NOT EXISTS disks_inode ON disks (dev, ino);
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY,
  disk_id TEXT NOT NULL,
  status TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at);
CREATE TABLE IF NOT EXISTS events (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  time INTEGER NOT NULL,
  severity TEXT NOT NULL,
  type TEXT NOT NULL,
  disk_id TEXT,
  job_id TEXT,
  message TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
`;

type Row = { data: string; locked_by: string | null };

export class SqliteStore implements Store {
  private readonly db: Database.Database;
  private readonly stmts;

  constructor(path: string) {
    this.db = new Database(path);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = NORMAL');
    this.db.pragma('busy_timeout = 5000');
    this.db.exec(SCHEMA);
    const p = (sql: string) => this.db.prepare(sql);
    this.stmts = {
      allDisks: p('SELECT data, locked_by FROM disks WHERE present = 1 OR ? = 1 ORDER BY rowid'),
      disk: p('SELECT data, locked_by FROM disks WHERE id = ?'),
      diskAt: p('SELECT data, locked_by FROM disks WHERE domain = ? AND rel = ?'),
      diskInode: p('SELECT data, locked_by FROM disks WHERE dev = ? AND ino = ? ORDER BY present DESC LIMIT 1'),
      putDisk: p(
        `INSERT INTO disks (id, domain, rel, dev, ino, present, locked_by, data) VALUES (@id, @domain, @rel, @dev, @ino, @present, @lockedBy, @data)
         ON CONFLICT (id) DO UPDATE SET domain = @domain, rel = @rel, dev = @dev, ino = @ino, present = @present, data = @data`,
      ),
      freeLocation: p('DELETE FROM disks WHERE domain = ? AND rel = ? AND id <> ? AND present = 0'),
      lock: p('UPDATE disks SET locked_by = ? WHERE id = ? AND locked_by IS NULL'),
      unlock: p('UPDATE disks SET locked_by = NULL WHERE id = ? AND locked_by = ?'),
      putJob: p(
        `INSERT INTO jobs (id, disk_id, status, created_at, data) VALUES (@id, @diskId, @status, @createdAt, @data)
         ON CONFLICT (id) DO UPDATE SET status = @status, data = @data`,
      ),
      job: p('SELECT data FROM jobs WHERE id = ?'),
      addEvent: p('INSERT INTO events (time, severity, type, disk_id, job_id, message) VALUES (?, ?, ?, ?, ?, ?)'),
      events: p('SELECT * FROM events WHERE id > ? ORDER BY id DESC LIMIT ?'),
      getSetting: p('SELECT value FROM settings WHERE key = ?'),
      setSetting: p('INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value'),
    };
  }

  private static disk(r: Row | undefined): DiskRecord | undefined {
    if (!r) return undefined;
    const d = JSON.parse(r.data) as DiskRecord;
    d.lockedBy = r.locked_by;
    return d;
  }

  listDisks(includeMissing = false): DiskRecord[] {
    return (this.stmts.allDisks.all(includeMissing ? 1 : 0) as Row[]).map((r) => SqliteStore.disk(r)!);
  }
  getDisk(id: string): DiskRecord | undefined {
    return SqliteStore.disk(this.stmts.disk.get(id) as Row | undefined);
  }
  findDisk(domain: number, rel: string): DiskRecord | undefined {
    return SqliteStore.disk(this.stmts.diskAt.get(domain, rel) as Row | undefined);
  }
  findDiskByInode(dev: number, ino: number): DiskRecord | undefined {
    return SqliteStore.disk(this.stmts.diskInode.get(dev, ino) as Row | undefined);
  }
  putDisk(d: DiskRecord): void {
    const { lockedBy: _lock, ...rest } = d;
    this.transaction(() => {
      // A disk that vanished and a new file at its old path: the new one takes the location.
      this.stmts.freeLocation.run(d.domain, d.rel, d.id);
      this.stmts.putDisk.run({ id: d.id, domain: d.domain, rel: d.rel, dev: d.dev, ino: d.ino, present: d.present ? 1 : 0, lockedBy: null, data: JSON.stringify(rest) });
    });
  }
  lockDisk(diskId: string, jobId: string): boolean {
    return this.stmts.lock.run(jobId, diskId).changes === 1;
  }
  unlockDisk(diskId: string, jobId: string): void {
    this.stmts.unlock.run(diskId, jobId);
  }
  putJob(j: JobRecord): void {
    this.stmts.putJob.run({ id: j.id, diskId: j.diskId, status: j.status, createdAt: j.createdAt, data: JSON.stringify(j) });
  }
  getJob(id: string): JobRecord | undefined {
    const r = this.stmts.job.get(id) as { data: string } | undefined;
    return r ? (JSON.parse(r.data) as JobRecord) : undefined;
  }
  listJobs(opts: { status?: JobStatus[]; diskId?: string; limit?: number } = {}): JobRecord[] {
    const where: string[] = [];
    const args: unknown[] = [];
    if (opts.status?.length) {
      where.push(`status IN (${opts.status.map(() => '?').join(',')})`);
      args.push(...opts.status);
    }
    if (opts.diskId) {
      where.push('disk_id = ?');
      args.push(opts.diskId);
    }
    const sql = `SELECT data FROM jobs ${where.length ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY created_at DESC, rowid DESC LIMIT ?`;
    args.push(opts.limit ?? 1000);
    return (this.db.prepare(sql).all(...args) as Array<{ data: string }>).map((r) => JSON.parse(r.data) as JobRecord);
  }
  addEvent(e: Omit<EventRecord, 'id' | 'time'>): EventRecord {
    const time = Date.now();
    const r = this.stmts.addEvent.run(time, e.severity, e.type, e.diskId, e.jobId, e.message);
    return { id: Number(r.lastInsertRowid), time, ...e };
  }
  listEvents(opts: { afterId?: number; limit?: number } = {}): EventRecord[] {
    const rows = this.stmts.events.all(opts.afterId ?? 0, opts.limit ?? 200) as Array<{
      id: number;
      time: number;
      severity: EventRecord['severity'];
      type: EventType;
      disk_id: string | null;
      job_id: string | null;
      message: string;
    }>;
    return rows.map((r) => ({ id: r.id, time: r.time, severity: r.severity, type: r.type, diskId: r.disk_id, jobId: r.job_id, message: r.message }));
  }
  getSetting(key: string): string | undefined {
    return (this.stmts.getSetting.get(key) as { value: string } | undefined)?.value;
  }
  setSetting(key: string, value: string): void {
    this.stmts.setSetting.run(key, value);
  }
  transaction<T>(fn: () => T): T {
    return this.db.transaction(fn)();
  }
  close(): void {
    this.db.close();
  }
}
