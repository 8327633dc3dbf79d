/**
 * The disk list as the database answers it: one page at a time in a stable order (keyset paging
 * on the sort key and the disk id, so a cursor stays valid while disks come and go), and the
 * totals grouped by domain and status. The sort and filter columns are computed by the database
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

/** Where the previous page ended: its last disk's sort value and id. */
export interface After {
  value: string | number;
  id: string;
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

const list = (n: number) => Array.from({ length: n }, () => '?').join(', ');

export class DiskPages {
  constructor(private readonly db: Db) {}

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

  private where(f: ListFilter, o: ListOverlay): { sql: string; args: SqlValue[] } {
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
    }
    if (f.q) {
      w.push(this.db.dialect === 'postgres' ? 'strpos(lower(name), ?) > 0' : 'instr(lower(name), ?) > 0');
      args.push(f.q.toLowerCase());
    }
    return { sql: w.join(' AND '), args };
  }

  private sortExpr(sort: Sort, o: ListOverlay): { sql: string; args: SqlValue[] } {
    return sort.field === 'status' ? this.statusExpr(o) : { sql: SORT_COLUMN[sort.field], args: [] };
  }

  /** The SQL of one page (also what EXPLAIN is asked about). */
  pageSql(f: ListFilter, o: ListOverlay, sort: Sort, after: After | undefined, limit: number): { sql: string; args: SqlValue[] } {
    const w = this.where(f, o);
    const key = this.sortExpr(sort, o);
    const args = [...key.args, ...w.args];
    let sql = `SELECT ${DISK_COLUMNS}, ${key.sql} AS sort_value FROM disks WHERE ${w.sql}`;
    if (after) {
      sql += ` AND (${key.sql}, id) ${sort.desc ? '<' : '>'} (?, ?)`;
      args.push(...key.args, after.value, after.id);
    }
    const dir = sort.desc ? 'DESC' : 'ASC';
    sql += ` ORDER BY ${key.sql} ${dir}, id ${dir} LIMIT ?`;
    args.push(...key.args, limit);
    return { sql, args };
  }

  /** One page of present disks in `sort` order after `after`, with the sort value of each. */
  async page(f: ListFilter, o: ListOverlay, sort: Sort, after: After | undefined, limit: number): Promise<Array<{ record: DiskRecord; sortValue: string | number }>> {
    const q = this.pageSql(f, o, sort, after, limit);
    const rows = await this.db.all<DiskRow & { sort_value: string | number }>(q.sql, q.args);
    return rows.map((r) => ({ record: decodeDisk(r), sortValue: r.sort_value }));
  }

  /** Every present disk that passes the filter, in `sort` order, `size` at a time (one page query each). */
  async *chunks(f: ListFilter, o: ListOverlay, sort: Sort, size: number): AsyncGenerator<DiskRecord[]> {
    let after: After | undefined;
    for (;;) {
      const rows = await this.page(f, o, sort, after, size);
      if (rows.length) yield rows.map((r) => r.record);
      if (rows.length < size) return;
      const last = rows[rows.length - 1]!;
      after = { value: last.sortValue, id: last.record.id };
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
    const q = this.pageSql(f, o, sort, after, limit);
    if (this.db.dialect === 'sqlite') {
      const rows = await this.db.all<{ detail: string }>(`EXPLAIN QUERY PLAN ${q.sql}`, q.args);
      return rows.map((r) => r.detail).join('\n');
    }
    const rows = await this.db.all<{ 'QUERY PLAN': string }>(`EXPLAIN ${q.sql}`, q.args);
    return rows.map((r) => r['QUERY PLAN']).join('\n');
  }
}
