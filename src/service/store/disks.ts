/** The disks table: one row per image file of a domain, its lock, and its analysis kept apart. */
import type { DiskMapJson } from '../../index.js';
import type { Db } from './db.js';
import type { AnalysisSummary, DiskRecord } from './records.js';
import { recordKey } from '../domains/stat-key.js';

export type DiskRow = { id: string; domain_id: string; rel: string; ino: number; present: number; locked_by: string | null; in_use: number; backing_id: string | null; first_seen: number; data: string; analysis: string | null };

export const DISK_COLUMNS = 'id, domain_id, rel, ino, present, locked_by, in_use, backing_id, first_seen, data, analysis';

/**
 * Fields kept in columns, because they are queried or written on their own (the lock by job
 * transitions, the analysis by the analyzer, the backing link by the chain linker): a writer of
 * one never overwrites another's with a stale copy. The rest is the JSON `data`.
 */
type Columns = 'id' | 'domainId' | 'rel' | 'ino' | 'present' | 'lockedBy' | 'inUse' | 'backingId' | 'firstSeen' | AnalysisFields;
type AnalysisFields = 'analysis' | 'analysisKey' | 'analysisError' | 'analyzedAt';
type DataFields = Omit<DiskRecord, Columns>;

/** The `analysis` column: what the analyzer found, and for which version of the file. */
export type StoredAnalysis = Pick<DiskRecord, AnalysisFields>;
type AnalysisColumn = { summary: AnalysisSummary | null; key: string | null; error: string | null; at: number | null };

export function analysisColumn(a: StoredAnalysis): string {
  return JSON.stringify({ summary: a.analysis, key: a.analysisKey, error: a.analysisError, at: a.analyzedAt } satisfies AnalysisColumn);
}

/**
 * The columns are assigned onto the parsed `data` object rather than spread with it into a new
 * one: V8 builds `{...data, id, ...}` (some 30 keys) on its slow path, 35-75 µs a row and short-lived
 * maps and descriptors that outlive scavenges, so a page of 100 rows took 5-15 ms and most of the
 * idle pages' p95 was the garbage collector (issue 21's 100,000-disk bench).
 */
export function decodeDisk(r: DiskRow): DiskRecord {
  const data = JSON.parse(r.data) as DataFields & { statKey?: string };
  // The last key encode wrote: deleting it keeps the object's fast shape.
  delete data.statKey;
  const a = r.analysis ? (JSON.parse(r.analysis) as AnalysisColumn) : undefined;
  const columns: Pick<DiskRecord, Columns> = {
    id: r.id,
    domainId: r.domain_id,
    rel: r.rel,
    ino: r.ino,
    present: !!r.present,
    lockedBy: r.locked_by,
    inUse: !!r.in_use,
    backingId: r.backing_id,
    firstSeen: r.first_seen,
    analysis: a?.summary ?? null,
    analysisKey: a?.key ?? null,
    analysisError: a?.error ?? null,
    analyzedAt: a?.at ?? null,
  };
  return Object.assign(data, columns);
}

/** Column fields are left out of `data` (they are in their columns); the stat key is written last. */
const COLUMN_FIELDS = new Set<string>(['id', 'domainId', 'rel', 'ino', 'present', 'lockedBy', 'inUse', 'backingId', 'firstSeen', 'analysis', 'analysisKey', 'analysisError', 'analyzedAt'] satisfies Columns[]);

function encode(d: DiskRecord): string {
  const data: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(d)) if (!COLUMN_FIELDS.has(k)) data[k] = v;
  // The stat key rides along so the database can tell a current analysis from a stale one (analysis_state).
  data['statKey'] = recordKey(d);
  return JSON.stringify(data);
}

/** A unique-constraint violation: another host recorded the same file first. */
export function isDuplicate(e: unknown): boolean {
  const code = (e as { code?: unknown }).code;
  return code === '23505' || code === 'SQLITE_CONSTRAINT_UNIQUE' || code === 'SQLITE_CONSTRAINT_PRIMARYKEY';
}

/** What a rescan needs of a known disk to tell that its file has not changed (kept light: a site may hold 100,000). */
export type ScanEntry = Pick<DiskRecord, 'id' | 'rel' | 'present' | 'lockedBy' | 'inUse' | 'device' | 'health' | 'analysisKey' | 'analyzedAt' | 'backingRef' | 'backingId'> & {
  /** The stat key of the file as recorded (recordKey). */
  statKey: string;
};

/** Rows read at a time for the scan index (SQLite reads them synchronously: 1,000 rows hold the event loop a few ms). */
const SCAN_BATCH = 1000;

export class Disks {
  constructor(private readonly db: Db) {}

  async list(opts: { includeMissing?: boolean; domainId?: string } = {}): Promise<DiskRecord[]> {
    const where: string[] = [];
    const args: Array<string | number> = [];
    if (!opts.includeMissing) where.push('present = 1');
    if (opts.domainId) {
      where.push('domain_id = ?');
      args.push(opts.domainId);
    }
    const rows = await this.db.all<DiskRow>(`SELECT ${DISK_COLUMNS} FROM disks ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY first_seen, id`, args);
    return rows.map(decodeDisk);
  }

  /** Every disk of a domain (present or not) by its path, light, read in batches. */
  async scanIndex(domainId: string): Promise<Map<string, ScanEntry>> {
    const out = new Map<string, ScanEntry>();
    let after = '';
    for (;;) {
      const rows = await this.db.all<DiskRow>(`SELECT ${DISK_COLUMNS} FROM disks WHERE domain_id = ? AND rel > ? ORDER BY rel LIMIT ?`, [domainId, after, SCAN_BATCH]);
      for (const r of rows) {
        // Only what a rescan compares: no whole record is built.
        const data = JSON.parse(r.data) as Pick<DiskRecord, 'device' | 'health' | 'backingRef' | 'size' | 'mtimeMs' | 'ctimeMs' | 'actualSize'> & { statKey?: string };
        const a = r.analysis ? (JSON.parse(r.analysis) as AnalysisColumn) : undefined;
        out.set(r.rel, {
          id: r.id, rel: r.rel, present: !!r.present, lockedBy: r.locked_by, inUse: !!r.in_use, device: data.device ?? null, health: data.health,
          analysisKey: a?.key ?? null, analyzedAt: a?.at ?? null, backingRef: data.backingRef, backingId: r.backing_id, statKey: data.statKey ?? recordKey({ ...data, ino: r.ino }),
        });
      }
      if (rows.length < SCAN_BATCH) return out;
      after = rows[rows.length - 1]!.rel;
      // SQLite answered synchronously: let requests in before the next batch.
      await new Promise((r) => setImmediate(r));
    }
  }

  /** The present disks at these places (a VM's disks), in batches. */
  async atPlaces(places: ReadonlyArray<{ domainId: string; rel: string }>): Promise<DiskRecord[]> {
    const out: DiskRecord[] = [];
    for (let i = 0; i < places.length; i += 400) {
      const part = places.slice(i, i + 400);
      const rows = await this.db.all<DiskRow>(`SELECT ${DISK_COLUMNS} FROM disks WHERE present = 1 AND (${part.map(() => '(domain_id = ? AND rel = ?)').join(' OR ')})`, part.flatMap((p) => [p.domainId, p.rel]));
      out.push(...rows.map(decodeDisk));
    }
    return out;
  }

  async countPresent(): Promise<number> {
    return Number((await this.db.get<{ n: number }>('SELECT COUNT(*) AS n FROM disks WHERE present = 1'))?.n ?? 0);
  }

  async get(id: string): Promise<DiskRecord | undefined> {
    const r = await this.db.get<DiskRow>(`SELECT ${DISK_COLUMNS} FROM disks WHERE id = ?`, [id]);
    return r && decodeDisk(r);
  }

  /** Several disks by id, in batches (missing ones are left out). */
  async getMany(ids: readonly string[]): Promise<DiskRecord[]> {
    const out: DiskRecord[] = [];
    for (let i = 0; i < ids.length; i += 500) {
      const part = ids.slice(i, i + 500);
      const rows = await this.db.all<DiskRow>(`SELECT ${DISK_COLUMNS} FROM disks WHERE id IN (${part.map(() => '?').join(', ')})`, part);
      out.push(...rows.map(decodeDisk));
    }
    return out;
  }

  /** Inside a transaction: the row, held until commit against other lockers. */
  async getForUpdate(id: string): Promise<DiskRecord | undefined> {
    const r = await this.db.get<DiskRow>(`SELECT ${DISK_COLUMNS} FROM disks WHERE id = ?${this.db.lockRows}`, [id]);
    return r && decodeDisk(r);
  }

  async map(id: string): Promise<DiskMapJson | null> {
    const r = await this.db.get<{ analysis_map: string | null }>('SELECT analysis_map FROM disks WHERE id = ?', [id]);
    return r?.analysis_map ? (JSON.parse(r.analysis_map) as DiskMapJson) : null;
  }

  async findAt(domainId: string, rel: string): Promise<DiskRecord | undefined> {
    const r = await this.db.get<DiskRow>(`SELECT ${DISK_COLUMNS} FROM disks WHERE domain_id = ? AND rel = ?`, [domainId, rel]);
    return r && decodeDisk(r);
  }

  async findByInode(domainId: string, ino: number): Promise<DiskRecord | undefined> {
    const r = await this.db.get<DiskRow>(`SELECT ${DISK_COLUMNS} FROM disks WHERE domain_id = ? AND ino = ? ORDER BY present DESC LIMIT 1`, [domainId, ino]);
    return r && decodeDisk(r);
  }

  /**
   * Record what a probe found: insert the disk, or update its file facts. The lock, the analysis
   * and the backing link have writers of their own and are left as stored (a new disk starts with
   * the record's). A vanished disk's record at the same location gives way.
   */
  async put(d: DiskRecord): Promise<void> {
    await this.db.transaction(async (tx) => {
      await tx.run('DELETE FROM disks WHERE domain_id = ? AND rel = ? AND id <> ? AND present = 0 AND locked_by IS NULL', [d.domainId, d.rel, d.id]);
      await tx.run(
        `INSERT INTO disks (id, domain_id, rel, ino, present, locked_by, in_use, backing_id, first_seen, data, analysis, analysis_map)
         VALUES (?, ?, ?, ?, ?, NULL, ?, ?, ?, ?, ?, NULL)
         ON CONFLICT (id) DO UPDATE SET domain_id = excluded.domain_id, rel = excluded.rel, ino = excluded.ino, present = excluded.present,
           in_use = excluded.in_use, data = excluded.data`,
        [d.id, d.domainId, d.rel, d.ino, d.present ? 1 : 0, d.inUse ? 1 : 0, d.backingId, d.firstSeen, encode(d), analysisColumn(d)],
      );
    });
  }

  /** Store an analysis made of the file with inode `ino`; false when the disk is another file now. */
  async setAnalysis(id: string, ino: number, a: StoredAnalysis, map: DiskMapJson | null): Promise<boolean> {
    return (await this.db.run('UPDATE disks SET analysis = ?, analysis_map = ? WHERE id = ? AND ino = ?', [analysisColumn(a), map ? JSON.stringify(map) : null, id, ino])) === 1;
  }

  async setBacking(id: string, backingId: string | null): Promise<void> {
    await this.db.run('UPDATE disks SET backing_id = ? WHERE id = ?', [backingId, id]);
  }

  /** Disks whose backing file is this one. */
  async derivedOf(id: string): Promise<DiskRecord[]> {
    return (await this.db.all<DiskRow>(`SELECT ${DISK_COLUMNS} FROM disks WHERE backing_id = ? AND present = 1 AND id <> ?`, [id, id])).map(decodeDisk);
  }

  async setInUse(id: string, inUse: boolean): Promise<void> {
    await this.db.run('UPDATE disks SET in_use = ? WHERE id = ?', [inUse ? 1 : 0, id]);
  }

  /** Take the disk for a job if nobody holds it; false when it is taken. */
  async lock(diskId: string, jobId: string): Promise<boolean> {
    return (await this.db.run('UPDATE disks SET locked_by = ? WHERE id = ? AND locked_by IS NULL', [jobId, diskId])) === 1;
  }

  async unlock(diskId: string, jobId: string): Promise<void> {
    await this.db.run('UPDATE disks SET locked_by = NULL WHERE id = ? AND locked_by = ?', [diskId, jobId]);
  }

  /** Locks held by jobs that are no longer pending or running (none should exist; repaired at start). */
  async releaseStaleLocks(): Promise<number> {
    return this.db.run("UPDATE disks SET locked_by = NULL WHERE locked_by IS NOT NULL AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.id = disks.locked_by AND jobs.status IN ('pending', 'running'))");
  }

  /** A 0.1.0 database named domains by their index in the configuration: give those disks the domain's UUID. */
  async adoptLegacyDomain(legacyId: string, domainId: string): Promise<number> {
    return this.db.transaction(async (tx) => {
      const rows = await tx.all<{ id: string; data: string }>('SELECT id, data FROM disks WHERE domain_id = ?', [legacyId]);
      for (const r of rows) {
        const data = { ...(JSON.parse(r.data) as object), domainId };
        await tx.run('UPDATE disks SET domain_id = ?, data = ? WHERE id = ?', [domainId, JSON.stringify(data), r.id]);
      }
      await tx.run('UPDATE jobs SET domain_id = ? WHERE domain_id = ?', [domainId, legacyId]);
      return rows.length;
    });
  }
}
