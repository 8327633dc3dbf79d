/**
 * Where each disk stood when a list's first page was read. Every change of a disk's list columns
 * (migration 6's triggers) keeps their old values in `disk_moves`. A page's mark says which changes
 * it saw: in SQLite the last move's seq (one writer at a time, so seq order is commit order); in
 * PostgreSQL the statement's snapshot, which names the transactions it did not see (there, seq
 * order is not commit order). A later page then places every disk by its values at the mark:
 * a disk no move touched since is read from its row through the list indexes; one that moved
 * takes its oldest move after the mark, which holds what the row said at the mark. So a disk
 * whose sort key changes between pages is shown once, where the first page would have put it.
 *
 * Moves are kept MOVES_KEPT_MS; a cursor older than CURSOR_TTL_MS is refused (its moves may be gone).
 * A cursor page reads every move since its mark, so one with more than MAX_MOVES_SINCE behind it is
 * refused too (CursorTooOld): while a first scan analyses thousands of disks a minute, the client
 * starts again from a first page rather than pay for all of them on every page.
 */
import type { Db, SqlValue } from './db.js';

export const CURSOR_TTL_MS = 60 * 60_000;
export const MOVES_KEPT_MS = 2 * CURSOR_TTL_MS;
export const MAX_MOVES_SINCE = 10_000;

/** Too much changed since the cursor's first page to place its disks cheaply. */
export class CursorTooOld extends Error {}

/** The columns a moved disk's old values are read back under: the names the list's SQL uses. */
const THEN_COLUMNS = 'id, present, domain_id, first_seen, name, actual_size, virtual_size, reclaimable, rstatus';

export class ListMoves {
  constructor(private readonly db: Db) {}

  /** A column expression giving the mark of what the statement reads (add it to a page's SELECT). */
  markExpr(): string {
    return this.db.dialect === 'postgres' ? 'pg_current_snapshot()::text' : "(SELECT COALESCE(MAX(seq), 0) FROM disk_moves) || ''";
  }

  /** A mark this store could have made (a cursor is the client's to send back, or forge). */
  validMark(mark: string): boolean {
    if (mark.length > 8192) return false;
    return this.db.dialect === 'postgres' ? /^\d+:\d+:(\d+(,\d+)*)?$/.test(mark) : /^\d+$/.test(mark);
  }

  /** True where the row `disks` has not moved since the mark: a filter on the current rows. */
  unmovedSince(mark: string): { sql: string; args: SqlValue[] } {
    const after = this.db.dialect === 'postgres' ? 'NOT pg_visible_in_snapshot(m.xid, ?::pg_snapshot)' : 'm.seq > ?';
    return { sql: `NOT EXISTS (SELECT 1 FROM disk_moves m WHERE m.id = disks.id AND ${after})`, args: [this.db.dialect === 'postgres' ? mark : Number(mark)] };
  }

  /**
   * A table of the disks that moved since the mark, with their list columns as they were at it
   * (their oldest move since). Its column names are the disks table's, so the list's filters and
   * sort keys apply to it unchanged. Additions are not moves (a first scan adds thousands): a disk
   * added since the mark is placed by what it first was, and shown at most once like any other.
   */
  thenTable(mark: string): { sql: string; args: SqlValue[] } {
    if (this.db.dialect === 'postgres') {
      return {
        sql: `(SELECT DISTINCT ON (id) ${THEN_COLUMNS} FROM disk_moves
               WHERE xid >= pg_snapshot_xmin(?::pg_snapshot) AND NOT pg_visible_in_snapshot(xid, ?::pg_snapshot) ORDER BY id, seq)`,
        args: [mark, mark],
      };
    }
    // SQLite gives the bare columns of the row that holds MIN(seq).
    return { sql: `(SELECT ${THEN_COLUMNS}, MIN(seq) AS first_move FROM disk_moves WHERE seq > ? GROUP BY id)`, args: [Number(mark)] };
  }

  /** Refuse a mark with more than `max` moves since it (CursorTooOld). */
  async checkSince(mark: string, max = MAX_MOVES_SINCE): Promise<void> {
    const since = this.db.dialect === 'postgres' ? 'xid >= pg_snapshot_xmin(?::pg_snapshot) AND NOT pg_visible_in_snapshot(xid, ?::pg_snapshot)' : 'seq > ?';
    const args: SqlValue[] = this.db.dialect === 'postgres' ? [mark, mark] : [Number(mark)];
    const r = await this.db.get<{ n: number }>(`SELECT COUNT(*) AS n FROM (SELECT 1 FROM disk_moves WHERE ${since} LIMIT ?) x`, [...args, max + 1]);
    if (Number(r?.n ?? 0) > max) throw new CursorTooOld(`more than ${max} disks changed in the list since the cursor's first page`);
  }

  /** Forget moves no live cursor can need. */
  async prune(now = Date.now()): Promise<void> {
    await this.db.run('DELETE FROM disk_moves WHERE at < ?', [now - MOVES_KEPT_MS]);
  }
}
