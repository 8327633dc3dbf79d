/**
 * The disk list as the database answers it: one page at a time in a stable order (keyset paging
 * on the sort key and the disk id), and the totals grouped by domain and status. A cursor carries
 * the mark of its first page (list-moves.ts): later pages place each disk where the first page saw
 * it, so every disk present throughout is shown once even while sort keys change. The sort and filter columns are computed by the database
 * from each row (migration 5) and indexed for present disks, so a page reads about as many index
 * entries as it returns, not the whole table.
 *
 * A disk's status is mostly its own row's (locked, in use, illegal, ok: `rstatus`). Two facts come
 * from elsewhere and are laid over it per query: the domains no up host reaches (unreachable) and
 * the disks of VMs that are not down (in use). While neither applies, status is the indexed column.
 */
import type { Db, SqlValue } from './db.js';
import type { DiskRecord } from './records.js';
import { DISK_COLUMNS, decodeDisk, type DiskRow } from './disks.js';
import { ListMoves, MAX_MOVES_SINCE } from './list-moves.js';

export type SortField = 'name' | 'actualSize' | 'virtualSize' | 'reclaimable' | 'status' | 'seen';
export const SORT_FIELDS: readonly SortField[] = ['name', 'actualSize', 'virtualSize', 'reclaimable', 'status'];
export type ListStatus = 'ok' | 'locked' | 'in-use' | 'illegal' | 'unreachable';

const SORT_COLUMN: Record<Exclude<SortField, 'status'>, string> = { name: 'name', actualSize: 'actual_size', virtualSize: 'virtual_size', reclaimable: 'reclaimable', seen: 'first_seen' };

export interface ListFilter {
  domainId?: string;
  status?: ListStatus;
  /** Only these disks (a VM's). */
  ids?: readonly string[];
  needsSparsify?: boolean;
  /** A case-insensitive part of the name. */
  q?: string;
}

/** What the rows do not hold: laid over every query. */
export interface ListOverlay {
  /** Domains no up host reaches. */
  unreachable: readonly string[];
  /** Disks attached to a VM that is not down. */
  vmBusy: readonly string[];
  thresholdBytes: number;
  thresholdPercent: number;
}

export interface Sort {
  field: SortField;
  desc: boolean;
}

/** Where the previous page ended: its last disk's sort value and id, and the first page's mark. */
export interface After {
  value: string | number;
  id: string;
  /** What the first page saw (ListMoves); without it, pages follow the rows as they are now. */
  mark?: string;
}

export interface PageRow {
  record: DiskRecord;
  /** Where the disk stands in the order: its sort value as the first page saw it. */
  sortValue: string | number;
}

export interface Page {
  rows: PageRow[];
  /** The mark to carry in the next cursor (null when no row was read). */
  mark: string | null;
}

export interface Totals {
  disks: number;
  virtualBytes: number;
  actualBytes: number;
  reclaimableBytes: number;
  needsSparsify: number;
}

export interface SummaryRow extends Totals {
  domainId: string;
  status: ListStatus;
  analysis: 'done' | 'pending' | 'failed';
}

/** Up to this many matches, sorting them beats walking the sort's index past every other disk. */
const FEW_TO_SORT = 5000;

/** How a page's rows are found where the planner alone would choose worse. */
interface ReadPlan {
  index?: string;
  /** An FTS5 phrase: the names that hold q. */
  match?: string;
  /** PostgreSQL: q is held by 1% of a sample of names or more (read along the sort's index, not the trigrams'). */
  dense?: boolean;
}

/** Names sampled (along the name index) to tell a common q from a rare one. */
const SAMPLE = 2000;

const list = (n: number) => Array.from({ length: n }, () => '?').join(', ');
const QUALIFIED_COLUMNS = DISK_COLUMNS.split(', ').map((c) => `d.${c}`).join(', ');

/** The databases' order of sort values (byte order of text: SQLite's BINARY, PostgreSQL's "C"), then of ids. */
function order(a: PageRow, b: PageRow): number {
  const x = a.sortValue;
  const y = b.sortValue;
  const c = typeof x === 'number' && typeof y === 'number' ? x - y : Buffer.compare(Buffer.from(String(x)), Buffer.from(String(y)));
  return c || Buffer.compare(Buffer.from(a.record.id), Buffer.from(b.record.id));
}

export class DiskPages {
  private readonly moves: ListMoves;
  /** The most moves a cursor page reads before it is refused (CursorTooOld); a test makes it small. */
  readonly limits = { movesSinceMark: MAX_MOVES_SINCE };

  constructor(private readonly db: Db) {
    this.moves = new ListMoves(db);
  }

  /** A mark this store could have given (cursors come back from clients). */
  validMark(mark: string): boolean {
    return this.moves.validMark(mark);
  }

  /** Forget the moves no live cursor can need. */
  pruneMoves(now?: number): Promise<void> {
    return this.moves.prune(now);
  }

  /** The status as the API shows it, as SQL (with its parameters). */
  private statusExpr(o: ListOverlay): { sql: string; args: SqlValue[] } {
    if (!o.unreachable.length && !o.vmBusy.length) return { sql: 'rstatus', args: [] };
    const parts = ["CASE WHEN rstatus = 'locked' THEN 'locked'"];
    const args: SqlValue[] = [];
    if (o.unreachable.length) {
      parts.push(`WHEN domain_id IN (${list(o.unreachable.length)}) THEN 'unreachable'`);
      args.push(...o.unreachable);
    }
    if (o.vmBusy.length) {
      parts.push(`WHEN id IN (${list(o.vmBusy.length)}) THEN 'in-use'`);
      args.push(...o.vmBusy);
    }
    parts.push('ELSE rstatus END');
    const sql = `(${parts.join(' ')})`;
    return { sql: this.db.dialect === 'postgres' ? `${sql} COLLATE "C"` : sql, args };
  }

  private needsExpr(o: ListOverlay): { sql: string; args: SqlValue[] } {
    return { sql: '(reclaimable > 0 AND reclaimable >= ? AND reclaimable * 100 >= ? * actual_size)', args: [o.thresholdBytes, o.thresholdPercent] };
  }

  private where(f: ListFilter, o: ListOverlay, plan: ReadPlan = {}): { sql: string; args: SqlValue[] } {
    const w = ['present = 1'];
    const args: SqlValue[] = [];
    if (f.domainId !== undefined) {
      w.push('domain_id = ?');
      args.push(f.domainId);
    }
    if (f.ids) {
      if (!f.ids.length) w.push('1 = 0');
      else {
        w.push(`id IN (${list(f.ids.length)})`);
        args.push(...f.ids);
      }
    }
    if (f.status) {
      const s = this.statusExpr(o);
      w.push(`${s.sql} = ?`);
      args.push(...s.args, f.status);
      // The overlay only turns rows into 'unreachable' or 'in-use': the others keep their column's status, and its index serves.
      if (s.sql !== 'rstatus' && (f.status === 'locked' || f.status === 'illegal' || f.status === 'ok')) {
        w.push('rstatus = ?');
        args.push(f.status);
      }
    }
    if (f.needsSparsify !== undefined) {
      const n = this.needsExpr(o);
      w.push(f.needsSparsify ? n.sql : `NOT ${n.sql}`);
      args.push(...n.args);
      // Implied by the above, and a range the reclaimable index can read.
      if (f.needsSparsify) {
        w.push('reclaimable >= ?');
        args.push(Math.max(1, o.thresholdBytes));
      }
    }
    if (f.q) {
      // In PostgreSQL a LIKE, which the trigram index serves (migration 7), unless matches are dense; SQLite's index is asked in pageSql.
      if (this.db.dialect === 'postgres' && !plan.dense) {
        w.push("lower(name) LIKE ? ESCAPE '\\'");
        args.push(`%${f.q.toLowerCase().replace(/[\\%_]/g, (c) => `\\${c}`)}%`);
      } else {
        w.push(this.db.dialect === 'postgres' ? 'strpos(lower(name), ?::text) > 0' : 'instr(lower(name), ?) > 0');
        args.push(f.q.toLowerCase());
      }
    }
    return { sql: w.join(' AND '), args };
  }

  private sortExpr(sort: Sort, o: ListOverlay): { sql: string; args: SqlValue[] } {
    return sort.field === 'status' ? this.statusExpr(o) : { sql: SORT_COLUMN[sort.field], args: [] };
  }

  /**
   * How SQLite should find a page's rows, where its planner would choose worse (PostgreSQL keeps
   * statistics and chooses by itself). A few disks whose name holds `q` are found through the names'
   * trigram index and sorted; a few that need sparsify, in another order than reclaimable, through
   * the reclaimable index. Walking the sort's index would read nearly every disk to find them; when
   * they are many, it finds a page of them soon, and is what is done.
   */
  private async planFor(f: ListFilter, o: ListOverlay, sort: Sort): Promise<ReadPlan> {
    if (this.db.dialect === 'postgres') {
      // Its estimate of a LIKE's matches knows nothing of the names: where a sample of them shows
      // q is common (or too short for trigrams), the search must not go through the index.
      if (!f.q) return {};
      if ([...f.q].length < 3) return { dense: true };
      const r = await this.db.get<{ n: number }>(
        'SELECT COUNT(*) AS n FROM (SELECT name FROM disks WHERE present = 1 ORDER BY name LIMIT ?) s WHERE strpos(lower(name), ?::text) > 0',
        [SAMPLE, f.q.toLowerCase()],
      );
      return Number(r?.n ?? 0) * 100 >= SAMPLE ? { dense: true } : {};
    }
    const few = async (sql: string, args: SqlValue[]) => Number((await this.db.get<{ n: number }>(`SELECT COUNT(*) AS n FROM (${sql} LIMIT ?)`, [...args, FEW_TO_SORT + 1]))?.n ?? 0) <= FEW_TO_SORT;
    // Trigrams: a q of fewer than three characters has none.
    if (f.q && [...f.q].length >= 3) {
      const match = `"${f.q.replace(/"/g, '""')}"`;
      if (await few('SELECT 1 FROM disk_names WHERE disk_names MATCH ?', [match])) return { match };
    }
    if (f.needsSparsify === true && sort.field !== 'reclaimable' && (await few('SELECT 1 FROM disks WHERE present = 1 AND reclaimable >= ?', [Math.max(1, o.thresholdBytes)]))) {
      return { index: 'disks_list_reclaimable' };
    }
    return {};
  }

  /**
   * The SQL of one page of the rows as they are (also what EXPLAIN is asked about). A first page
   * also reads its mark; a later one leaves out the disks that moved since its mark (movedSql).
   */
  pageSql(f: ListFilter, o: ListOverlay, sort: Sort, after: After | undefined, limit: number, plan: ReadPlan = {}): { sql: string; args: SqlValue[] } {
    const w = this.where(f, o, plan);
    const key = this.sortExpr(sort, o);
    const args = [...key.args, ...w.args];
    let sql = `SELECT ${DISK_COLUMNS}, ${key.sql} AS sort_value${after ? '' : `, ${this.moves.markExpr()} AS mark`} FROM disks${plan.index ? ` INDEXED BY ${plan.index}` : ''} WHERE ${w.sql}`;
    if (plan.match) {
      sql += ' AND rowid IN (SELECT rowid FROM disk_names WHERE disk_names MATCH ?)';
      args.push(plan.match);
    }
    if (after) {
      sql += ` AND (${key.sql}, id) ${sort.desc ? '<' : '>'} (?, ?)`;
      args.push(...key.args, after.value, after.id);
      if (after.mark !== undefined) {
        const u = this.moves.unmovedSince(after.mark);
        sql += ` AND ${u.sql}`;
        args.push(...u.args);
      }
    }
    const dir = sort.desc ? 'DESC' : 'ASC';
    sql += ` ORDER BY ${key.sql} ${dir}, id ${dir} LIMIT ?`;
    args.push(...key.args, limit);
    return { sql, args };
  }

  /** The SQL of the disks that moved since the mark and are still present, placed by their values at the mark. */
  private movedSql(f: ListFilter, o: ListOverlay, sort: Sort, after: After & { mark: string }, limit: number): { sql: string; args: SqlValue[] } {
    const then = this.moves.thenTable(after.mark);
    const w = this.where(f, o);
    const key = this.sortExpr(sort, o);
    const dir = sort.desc ? 'DESC' : 'ASC';
    const inner = `SELECT id, ${key.sql} AS sort_value FROM ${then.sql} AS t
      WHERE ${w.sql} AND (${key.sql}, id) ${sort.desc ? '<' : '>'} (?, ?) AND EXISTS (SELECT 1 FROM disks c WHERE c.id = t.id AND c.present = 1)
      ORDER BY ${key.sql} ${dir}, id ${dir} LIMIT ?`;
    return {
      sql: `SELECT ${QUALIFIED_COLUMNS}, s.sort_value FROM (${inner}) s JOIN disks d ON d.id = s.id`,
      args: [...key.args, ...then.args, ...w.args, ...key.args, after.value, after.id, ...key.args, limit],
    };
  }

  /** One page of present disks in `sort` order after `after`, with the sort value of each. */
  async page(f: ListFilter, o: ListOverlay, sort: Sort, after: After | undefined, limit: number): Promise<Page> {
    const read = async (q: { sql: string; args: SqlValue[] }) => {
      const rows = await this.db.all<DiskRow & { sort_value: string | number; mark?: string }>(q.sql, q.args);
      return { rows: rows.map((r) => ({ record: decodeDisk(r), sortValue: r.sort_value })), mark: rows[0]?.mark ?? null };
    };
    if (after?.mark !== undefined) await this.moves.checkSince(after.mark, this.limits.movesSinceMark);
    const now = await read(this.pageSql(f, o, sort, after, limit, await this.planFor(f, o, sort)));
    if (after?.mark === undefined) return now;
    const moved = await read(this.movedSql(f, o, sort, { ...after, mark: after.mark }, limit));
    if (!moved.rows.length) return { rows: now.rows, mark: after.mark };
    // A disk that moved between the two reads is in both, at the same place: keep it once.
    const seen = new Set(now.rows.map((r) => r.record.id));
    const rows = [...now.rows, ...moved.rows.filter((r) => !seen.has(r.record.id))].sort((a, b) => (sort.desc ? -order(a, b) : order(a, b))).slice(0, limit);
    return { rows, mark: after.mark };
  }

  /** Every present disk that passes the filter, in `sort` order, `size` at a time (one page query each), as the first chunk saw them. */
  async *chunks(f: ListFilter, o: ListOverlay, sort: Sort, size: number): AsyncGenerator<DiskRecord[]> {
    let after: After | undefined;
    for (;;) {
      const { rows, mark } = await this.page(f, o, sort, after, size);
      if (rows.length) yield rows.map((r) => r.record);
      if (rows.length < size) return;
      const last = rows[rows.length - 1]!;
      after = { value: last.sortValue, id: last.record.id, mark: mark ?? undefined };
    }
  }

  /** Every present disk that passes the filter, first seen first (the schedule's candidates: few). */
  async all(f: ListFilter, o: ListOverlay): Promise<DiskRecord[]> {
    const out: DiskRecord[] = [];
    for await (const c of this.chunks(f, o, { field: 'seen', desc: false }, 500)) out.push(...c);
    return out;
  }

  /** Counts and byte totals of present disks by domain, status and analysis state. */
  async summary(o: ListOverlay): Promise<SummaryRow[]> {
    const s = this.statusExpr(o);
    const n = this.needsExpr(o);
    const rows = await this.db.all<{ domain_id: string; st: ListStatus; an: SummaryRow['analysis']; disks: number; v: number | null; a: number | null; r: number | null; ns: number | null }>(
      `SELECT domain_id, ${s.sql} AS st, analysis_state AS an, COUNT(*) AS disks,
         SUM(CASE WHEN virtual_size > 0 THEN virtual_size ELSE 0 END) AS v, SUM(actual_size) AS a,
         SUM(CASE WHEN reclaimable > 0 THEN reclaimable ELSE 0 END) AS r, SUM(CASE WHEN ${n.sql} THEN 1 ELSE 0 END) AS ns
       FROM disks WHERE present = 1 GROUP BY domain_id, st, an`,
      [...s.args, ...n.args],
    );
    return rows.map((r) => ({
      domainId: r.domain_id,
      status: r.st,
      analysis: r.an,
      disks: Number(r.disks),
      virtualBytes: Number(r.v ?? 0),
      actualBytes: Number(r.a ?? 0),
      reclaimableBytes: Number(r.r ?? 0),
      needsSparsify: Number(r.ns ?? 0),
    }));
  }

  /** Present disks whose backing file is one of these (a page's derived lists). */
  async derivedOf(ids: readonly string[]): Promise<DiskRecord[]> {
    if (!ids.length) return [];
    const rows = await this.db.all<DiskRow>(`SELECT ${DISK_COLUMNS} FROM disks WHERE present = 1 AND backing_id IN (${list(ids.length)}) AND backing_id <> id`, ids);
    return rows.map(decodeDisk);
  }

  /** The query plan of a page, as the database states it (for tests and the curious). */
  async explain(f: ListFilter, o: ListOverlay, sort: Sort, after: After | undefined, limit: number): Promise<string> {
    const q = this.pageSql(f, o, sort, after, limit, await this.planFor(f, o, sort));
    if (this.db.dialect === 'sqlite') {
      const rows = await this.db.all<{ detail: string }>(`EXPLAIN QUERY PLAN ${q.sql}`, q.args);
      return rows.map((r) => r.detail).join('\n');
    }
    const rows = await this.db.all<{ 'QUERY PLAN': string }>(`EXPLAIN ${q.sql}`, q.args);
    return rows.map((r) => r['QUERY PLAN']).join('\n');
  }
}
