/**
 * The jobs table and each job's attempts. Columns hold what transitions test (status, attempt,
 * host, cancel request); the rest is JSON. Every write that a job's runner makes is conditional on
 * the status and attempt it expects (see jobs/fence.ts): a write that matches nothing changes nothing.
 */
import type { Db } from './db.js';
import type { AttemptOutcome, JobAttempt, JobRecord, JobStatus } from './records.js';

type Row = { id: string; disk_id: string; domain_id: string | null; status: JobStatus; created_at: number; host: string | null; attempt: number; cancel_requested: number; data: string };
const COLUMNS = 'id, disk_id, domain_id, status, created_at, host, attempt, cancel_requested, data';

function decode(r: Row): JobRecord {
  const j = JSON.parse(r.data) as JobRecord;
  return { ...j, id: r.id, diskId: r.disk_id, domainId: r.domain_id ?? j.domainId, status: r.status, createdAt: r.created_at, host: r.host, attempts: r.attempt, cancelRequested: !!r.cancel_requested };
}

/** Conditions a write expects of the stored job. */
export interface JobGuard {
  status: readonly JobStatus[];
  /** The fencing token: the attempt the writer made. */
  attempt?: number;
}

export interface JobQuery {
  status?: readonly JobStatus[];
  diskId?: string;
  host?: string;
  limit?: number;
}

type AttemptRow = { job_id: string; attempt: number; disk_id: string; host: string; started_at: number; ended_at: number | null; outcome: AttemptOutcome; error: string | null };

export class Jobs {
  constructor(private readonly db: Db) {}

  async insert(j: JobRecord): Promise<void> {
    await this.db.run(`INSERT INTO jobs (${COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`, [j.id, j.diskId, j.domainId, j.status, j.createdAt, j.host, j.attempts, j.cancelRequested ? 1 : 0, JSON.stringify(j)]);
  }

  async get(id: string): Promise<JobRecord | undefined> {
    const r = await this.db.get<Row>(`SELECT ${COLUMNS} FROM jobs WHERE id = ?`, [id]);
    return r && decode(r);
  }

  async getForUpdate(id: string): Promise<JobRecord | undefined> {
    const r = await this.db.get<Row>(`SELECT ${COLUMNS} FROM jobs WHERE id = ?${this.db.lockRows}`, [id]);
    return r && decode(r);
  }

  async list(q: JobQuery = {}): Promise<JobRecord[]> {
    const where: string[] = [];
    const args: Array<string | number> = [];
    if (q.status?.length) {
      where.push(`status IN (${q.status.map(() => '?').join(', ')})`);
      args.push(...q.status);
    }
    if (q.diskId) {
      where.push('disk_id = ?');
      args.push(q.diskId);
    }
    if (q.host) {
      where.push('host = ?');
      args.push(q.host);
    }
    args.push(q.limit ?? 1000);
    const rows = await this.db.all<Row>(`SELECT ${COLUMNS} FROM jobs ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY created_at DESC, id DESC LIMIT ?`, args);
    return rows.map(decode);
  }

  /**
   * Write the whole job if the stored one is in one of `guard.status` (and at `guard.attempt`).
   * Returns the stored cancel request when it was written, undefined when the guard failed.
   */
  async write(j: JobRecord, guard: JobGuard): Promise<{ cancelRequested: boolean } | undefined> {
    const args: Array<string | number | null> = [j.status, j.host, j.attempts, JSON.stringify(j), j.id, ...guard.status];
    let cond = `id = ? AND status IN (${guard.status.map(() => '?').join(', ')})`;
    if (guard.attempt !== undefined) {
      cond += ' AND attempt = ?';
      args.push(guard.attempt);
    }
    const rows = await this.db.all<{ cancel_requested: number }>(`UPDATE jobs SET status = ?, host = ?, attempt = ?, data = ? WHERE ${cond} RETURNING cancel_requested`, args);
    return rows[0] ? { cancelRequested: !!rows[0].cancel_requested } : undefined;
  }

  /** Ask a running job to stop; true when it was running. */
  async requestCancel(id: string): Promise<boolean> {
    return (await this.db.run("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = 'running'", [id])) === 1;
  }

  /** The fencing check: is `attempt` still the job's running attempt? Also reports a cancel request. */
  async fenceState(id: string, attempt: number): Promise<{ current: boolean; cancelRequested: boolean }> {
    const r = await this.db.get<{ status: JobStatus; attempt: number; cancel_requested: number }>('SELECT status, attempt, cancel_requested FROM jobs WHERE id = ?', [id]);
    return { current: !!r && r.status === 'running' && r.attempt === attempt, cancelRequested: !!r?.cancel_requested };
  }

  async startAttempt(a: Omit<JobAttempt, 'endedAt' | 'outcome' | 'error'>): Promise<void> {
    await this.db.run("INSERT INTO job_attempts (job_id, attempt, disk_id, host, started_at, ended_at, outcome, error) VALUES (?, ?, ?, ?, ?, NULL, 'running', NULL)", [a.jobId, a.attempt, a.diskId, a.host, a.startedAt]);
  }

  async endAttempt(jobId: string, attempt: number, outcome: AttemptOutcome, error: string | null, at = Date.now()): Promise<void> {
    await this.db.run("UPDATE job_attempts SET ended_at = ?, outcome = ?, error = ? WHERE job_id = ? AND attempt = ? AND outcome = 'running'", [at, outcome, error, jobId, attempt]);
  }

  async attempts(q: { jobId?: string; diskId?: string } = {}): Promise<JobAttempt[]> {
    const where: string[] = [];
    const args: string[] = [];
    if (q.jobId) {
      where.push('job_id = ?');
      args.push(q.jobId);
    }
    if (q.diskId) {
      where.push('disk_id = ?');
      args.push(q.diskId);
    }
    const rows = await this.db.all<AttemptRow>(`SELECT * FROM job_attempts ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY started_at, job_id, attempt`, args);
    return rows.map((r) => ({ jobId: r.job_id, attempt: r.attempt, diskId: r.disk_id, host: r.host, startedAt: r.started_at, endedAt: r.ended_at, outcome: r.outcome, error: r.error }));
  }

  /** Running jobs whose host is no longer up: theirs to take over. */
  async runningOnHostsNotUp(): Promise<JobRecord[]> {
    const rows = await this.db.all<Row>(`SELECT ${COLUMNS} FROM jobs WHERE status = 'running' AND (host IS NULL OR host NOT IN (SELECT name FROM hosts WHERE status = 'up'))`);
    return rows.map(decode);
  }

  async countByStatus(): Promise<Map<JobStatus, number>> {
    const rows = await this.db.all<{ status: JobStatus; n: number }>('SELECT status, COUNT(*) AS n FROM jobs GROUP BY status');
    return new Map(rows.map((r) => [r.status, Number(r.n)]));
  }

  /** Counts by status (metrics, the hosts view). */
  async countByHost(status: JobStatus): Promise<Map<string, number>> {
    const rows = await this.db.all<{ host: string; n: number }>('SELECT host, COUNT(*) AS n FROM jobs WHERE status = ? AND host IS NOT NULL GROUP BY host', [status]);
    return new Map(rows.map((r) => [r.host, Number(r.n)]));
  }
}
