/**
 * One versioned set of schema migrations for both databases, run at start. Version 1 is the
 * schema sparsify 0.1.0 created (SQLite only, no version table: recognised by its tables); every
 * later version moves the data forward without losing disks, jobs or events. Several hosts
 * starting at once migrate one at a time (PostgreSQL advisory lock; SQLite: one file, one writer).
 */
import type { Db } from './db.js';
import { DbFatalError } from './db.js';
import { PgDb } from './pg-db.js';
import { recordKey } from '../domains/stat-key.js';

export interface Migration {
  version: number;
  name: string;
  up(db: Db): Promise<void>;
}

/** Arbitrary, fixed: the advisory lock key of our migrations. */
const MIGRATION_LOCK = 0x5350_4152;

const ID = (db: Db) => (db.dialect === 'sqlite' ? 'INTEGER PRIMARY KEY AUTOINCREMENT' : 'BIGSERIAL PRIMARY KEY');

/** The domain index of a 0.1.0 database, until the service learns the UUID behind it (adoptLegacyDomains). */
export const legacyDomainId = (index: number): string => `legacy-${index}`;

const v1: Migration = {
  version: 1,
  name: 'sparsify 0.1.0: disks, jobs, events, settings',
  async up(db) {
    await db.exec(`
      CREATE TABLE disks (id TEXT PRIMARY KEY, domain INTEGER NOT NULL, rel TEXT NOT NULL, dev BIGINT NOT NULL, ino BIGINT NOT NULL,
        present INTEGER NOT NULL, locked_by TEXT, data TEXT NOT NULL, UNIQUE (domain, rel));
      CREATE INDEX disks_inode ON disks (dev, ino);
      CREATE TABLE jobs (id TEXT PRIMARY KEY, disk_id TEXT NOT NULL, status TEXT NOT NULL, created_at BIGINT NOT NULL, data TEXT NOT NULL);
      CREATE INDEX jobs_status ON jobs (status);
      CREATE INDEX jobs_created ON jobs (created_at);
      CREATE TABLE events (id ${ID(db)}, time BIGINT NOT NULL, severity TEXT NOT NULL, type TEXT NOT NULL, disk_id TEXT, job_id TEXT, message TEXT NOT NULL);
      CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    `);
  },
};

type V1Disk = { id: string; domain: number; rel: string; ino: number; present: number; locked_by: string | null; data: string };

const v2: Migration = {
  version: 2,
  name: 'cluster: domains by UUID, hosts, job attempts and fencing, analysis kept apart from the disk',
  async up(db) {
    await db.exec(`
      CREATE TABLE domains (id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at BIGINT NOT NULL);
      CREATE TABLE hosts (name TEXT PRIMARY KEY, instance TEXT NOT NULL, status TEXT NOT NULL, version TEXT NOT NULL, url TEXT,
        started_at BIGINT NOT NULL, last_heartbeat BIGINT NOT NULL, concurrency INTEGER NOT NULL);
      CREATE TABLE host_domains (host TEXT NOT NULL, domain_id TEXT NOT NULL, path TEXT NOT NULL, reachable INTEGER NOT NULL,
        can_discard INTEGER NOT NULL, error TEXT, checked_at BIGINT NOT NULL, PRIMARY KEY (host, domain_id));
      CREATE TABLE disks_v2 (id TEXT PRIMARY KEY, domain_id TEXT NOT NULL, rel TEXT NOT NULL, ino BIGINT NOT NULL, present INTEGER NOT NULL,
        locked_by TEXT, in_use INTEGER NOT NULL, backing_id TEXT, first_seen BIGINT NOT NULL, data TEXT NOT NULL, analysis TEXT, analysis_map TEXT,
        UNIQUE (domain_id, rel));
      CREATE TABLE job_attempts (job_id TEXT NOT NULL, attempt INTEGER NOT NULL, disk_id TEXT NOT NULL, host TEXT NOT NULL,
        started_at BIGINT NOT NULL, ended_at BIGINT, outcome TEXT NOT NULL, error TEXT, PRIMARY KEY (job_id, attempt));
      CREATE INDEX job_attempts_disk ON job_attempts (disk_id, started_at);
      ALTER TABLE jobs ADD COLUMN domain_id TEXT;
      ALTER TABLE jobs ADD COLUMN host TEXT;
      ALTER TABLE jobs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0;
      ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
      CREATE INDEX jobs_disk ON jobs (disk_id);
      ALTER TABLE events ADD COLUMN host TEXT;
    `);
    // Disks: the domain index becomes a domain id (a placeholder until the service attaches the
    // folder and learns its UUID), st_dev goes (it differs between hosts), the analysis moves out.
    const legacyDomain = new Map<string, string>();
    for (const r of await db.all<V1Disk>('SELECT id, domain, rel, ino, present, locked_by, data FROM disks')) {
      const old = JSON.parse(r.data) as Record<string, unknown> & { analysis?: { dataBytes: number; reclaimableBytes: number; warnings: string[] } | null; firstSeen?: number };
      const domainId = legacyDomainId(r.domain);
      legacyDomain.set(r.id, domainId);
      const { analysis, domain: _d, dev: _dev, lockedBy: _l, backingId, analysisKey, analysisError, analyzedAt, ...kept } = old;
      const data = { ...kept, backingRef: null };
      const summary = analysis ? { dataBytes: analysis.dataBytes, reclaimableBytes: analysis.reclaimableBytes, warnings: analysis.warnings ?? [] } : null;
      await db.run('INSERT INTO disks_v2 (id, domain_id, rel, ino, present, locked_by, in_use, backing_id, first_seen, data, analysis, analysis_map) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?)', [
        r.id,
        domainId,
        r.rel,
        r.ino,
        r.present,
        r.locked_by,
        typeof backingId === 'string' ? backingId : null,
        typeof old.firstSeen === 'number' ? old.firstSeen : 0,
        JSON.stringify(data),
        JSON.stringify({ summary, key: analysisKey ?? null, error: analysisError ?? null, at: analyzedAt ?? null }),
        analysis ? JSON.stringify(analysis) : null,
      ]);
    }
    await db.exec('DROP TABLE disks; ALTER TABLE disks_v2 RENAME TO disks; CREATE INDEX disks_inode ON disks (domain_id, ino); CREATE INDEX disks_backing ON disks (backing_id);');
    // Jobs: the attempt count and the domain become columns.
    for (const j of await db.all<{ id: string; disk_id: string; data: string }>('SELECT id, disk_id, data FROM jobs')) {
      const rec = JSON.parse(j.data) as { attempts?: number };
      const domainId = legacyDomain.get(j.disk_id) ?? null;
      await db.run('UPDATE jobs SET attempt = ?, domain_id = ?, data = ? WHERE id = ?', [rec.attempts ?? 0, domainId, JSON.stringify({ ...rec, domainId, host: null, cancelRequested: false }), j.id]);
    }
  },
};

const v3: Migration = {
  version: 3,
  name: 'virtual machines as each host reads them from libvirt; overlay analyses made again (truthful reclaimable)',
  async up(db) {
    await db.exec(`
      CREATE TABLE vms (host TEXT NOT NULL, uuid TEXT NOT NULL, name TEXT NOT NULL, state TEXT NOT NULL, reason TEXT,
        disks TEXT NOT NULL, PRIMARY KEY (host, uuid));
      CREATE TABLE vm_inventories (host TEXT PRIMARY KEY, uri TEXT NOT NULL, error TEXT, refreshed_at BIGINT NOT NULL, changed_at BIGINT NOT NULL);
    `);
    // Analyses of overlays counted the backing files' free space as reclaimable: make them again.
    for (const r of await db.all<{ id: string; data: string; analysis: string | null }>('SELECT id, data, analysis FROM disks WHERE analysis IS NOT NULL')) {
      const chain = (JSON.parse(r.data) as { chain?: unknown[] }).chain ?? [];
      if (chain.length < 2) continue;
      const a = JSON.parse(r.analysis!) as Record<string, unknown>;
      await db.run('UPDATE disks SET analysis = ? WHERE id = ?', [JSON.stringify({ ...a, key: null }), r.id]);
    }
  },
};

const v4: Migration = {
  version: 4,
  name: "storage domains choose when in-place sparsify compacts (default: where holes cannot be punched)",
  async up(db) {
    await db.exec("ALTER TABLE domains ADD COLUMN compaction TEXT NOT NULL DEFAULT 'where-no-holes'");
  },
};

/**
 * The disk columns the list pages sort and filter on, computed by the database from the row itself
 * and stored (computed on every read, they cost a JSON parse per row and column: a second for the
 * totals of 100,000 disks on SQLite).
 */
const V5_COLUMNS: Record<'sqlite' | 'postgres', string[]> = {
  sqlite: [
    `name TEXT GENERATED ALWAYS AS (json_extract(data, '$.name')) STORED`,
    `actual_size BIGINT GENERATED ALWAYS AS (json_extract(data, '$.actualSize')) STORED`,
    `virtual_size BIGINT GENERATED ALWAYS AS (COALESCE(json_extract(data, '$.virtualSize'), -1)) STORED`,
    `reclaimable BIGINT GENERATED ALWAYS AS (COALESCE(json_extract(analysis, '$.summary.reclaimableBytes'), -1)) STORED`,
    `rstatus TEXT GENERATED ALWAYS AS (CASE WHEN locked_by IS NOT NULL THEN 'locked' WHEN in_use <> 0 OR json_extract(data, '$.device.held') = 1 THEN 'in-use'
       WHEN json_extract(data, '$.health') = 'illegal' THEN 'illegal' ELSE 'ok' END) STORED`,
    `analysis_state TEXT GENERATED ALWAYS AS (CASE WHEN json_extract(data, '$.health') = 'illegal' THEN 'failed'
       WHEN json_extract(analysis, '$.key') IS NULL OR json_extract(analysis, '$.key') <> json_extract(data, '$.statKey') THEN 'pending'
       WHEN json_extract(analysis, '$.error') IS NOT NULL THEN 'failed' WHEN json_extract(analysis, '$.summary') IS NOT NULL THEN 'done' ELSE 'pending' END) STORED`,
  ],
  postgres: [
    `name TEXT COLLATE "C" GENERATED ALWAYS AS (data::jsonb ->> 'name') STORED`,
    `actual_size BIGINT GENERATED ALWAYS AS ((data::jsonb ->> 'actualSize')::bigint) STORED`,
    `virtual_size BIGINT GENERATED ALWAYS AS (COALESCE((data::jsonb ->> 'virtualSize')::bigint, -1)) STORED`,
    `reclaimable BIGINT GENERATED ALWAYS AS (COALESCE((analysis::jsonb -> 'summary' ->> 'reclaimableBytes')::bigint, -1)) STORED`,
    `rstatus TEXT COLLATE "C" GENERATED ALWAYS AS (CASE WHEN locked_by IS NOT NULL THEN 'locked' WHEN in_use <> 0 OR (data::jsonb -> 'device' ->> 'held') = 'true' THEN 'in-use'
       WHEN (data::jsonb ->> 'health') = 'illegal' THEN 'illegal' ELSE 'ok' END) STORED`,
    `analysis_state TEXT COLLATE "C" GENERATED ALWAYS AS (CASE WHEN (data::jsonb ->> 'health') = 'illegal' THEN 'failed'
       WHEN (analysis::jsonb ->> 'key') IS NULL OR (analysis::jsonb ->> 'key') <> (data::jsonb ->> 'statKey') THEN 'pending'
       WHEN (analysis::jsonb ->> 'error') IS NOT NULL THEN 'failed' WHEN (analysis::jsonb -> 'summary') IS NOT NULL AND (analysis::jsonb -> 'summary') <> 'null'::jsonb THEN 'done' ELSE 'pending' END) STORED`,
  ],
};

/** Every sort key of the list, and the columns a page can be filtered on before it: one index each (present disks only). */
export const LIST_SORT_COLUMNS = ['name', 'actual_size', 'virtual_size', 'reclaimable', 'rstatus'] as const;

const v5: Migration = {
  version: 5,
  name: 'disk list pages: sort and filter columns computed from each row, with their indexes',
  async up(db) {
    // The record's stat key goes into its data, so the database can tell a current analysis from a stale one.
    for (const r of await db.all<{ id: string; ino: number; data: string }>('SELECT id, ino, data FROM disks')) {
      const d = JSON.parse(r.data) as { size: number; mtimeMs: number; ctimeMs: number; actualSize: number };
      await db.run('UPDATE disks SET data = ? WHERE id = ?', [JSON.stringify({ ...d, statKey: recordKey({ ...d, ino: r.ino }) }), r.id]);
    }
    if (db.dialect === 'postgres') for (const c of V5_COLUMNS.postgres) await db.exec(`ALTER TABLE disks ADD COLUMN ${c}`);
    else {
      // SQLite adds only virtual generated columns to a table: the table is made again with them stored.
      const kept = 'id, domain_id, rel, ino, present, locked_by, in_use, backing_id, first_seen, data, analysis, analysis_map';
      await db.exec(`
        CREATE TABLE disks_v5 (id TEXT PRIMARY KEY, domain_id TEXT NOT NULL, rel TEXT NOT NULL, ino BIGINT NOT NULL, present INTEGER NOT NULL,
          locked_by TEXT, in_use INTEGER NOT NULL, backing_id TEXT, first_seen BIGINT NOT NULL, data TEXT NOT NULL, analysis TEXT, analysis_map TEXT,
          ${V5_COLUMNS.sqlite.join(',\n          ')},
          UNIQUE (domain_id, rel));
        INSERT INTO disks_v5 (${kept}) SELECT ${kept} FROM disks;
        DROP TABLE disks;
        ALTER TABLE disks_v5 RENAME TO disks;
        CREATE INDEX disks_inode ON disks (domain_id, ino);
        CREATE INDEX disks_backing ON disks (backing_id);`);
    }
    const indexes: string[] = [];
    for (const k of LIST_SORT_COLUMNS) {
      indexes.push(`CREATE INDEX disks_list_${k} ON disks (${k}, id) WHERE present = 1`);
      indexes.push(`CREATE INDEX disks_list_domain_${k} ON disks (domain_id, ${k}, id) WHERE present = 1`);
      if (k !== 'rstatus') indexes.push(`CREATE INDEX disks_list_status_${k} ON disks (rstatus, ${k}, id) WHERE present = 1`);
    }
    indexes.push('CREATE INDEX disks_list_seen ON disks (first_seen, id) WHERE present = 1');
    // The totals read this index alone (every column they group and sum is in it).
    indexes.push('CREATE INDEX disks_list_totals ON disks (domain_id, rstatus, analysis_state, actual_size, virtual_size, reclaimable, id) WHERE present = 1');
    await db.exec(indexes.join(';\n'));
  },
};

/** What a disk's list columns were before a change: enough to place it where a page saw it. */
const MOVED_COLUMNS = 'present, domain_id, first_seen, name, actual_size, virtual_size, reclaimable, rstatus';
/** A change that can move a disk in a list page's order or filters. */
const MOVES = ['present', 'domain_id', 'name', 'actual_size', 'virtual_size', 'reclaimable', 'rstatus'];

const v6: Migration = {
  version: 6,
  name: "the disk list's moves: each change of a disk's list columns keeps what they were, so a cursor pages the list as its first page saw it",
  async up(db) {
    const changed = MOVES.map((c) => (db.dialect === 'postgres' ? `OLD.${c} IS DISTINCT FROM NEW.${c}` : `OLD.${c} IS NOT NEW.${c}`)).join(' OR ');
    const old = MOVED_COLUMNS.split(', ').map((c) => `OLD.${c}`).join(', ');
    if (db.dialect === 'postgres') {
      // xid: the change's transaction, so a snapshot tells exactly which changes a page saw (commit order is not seq order).
      await db.exec(`
        CREATE TABLE disk_moves (seq BIGSERIAL PRIMARY KEY, id TEXT NOT NULL, xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
          at BIGINT NOT NULL DEFAULT (extract(epoch FROM clock_timestamp()) * 1000)::bigint,
          present INTEGER, domain_id TEXT, first_seen BIGINT, name TEXT COLLATE "C", actual_size BIGINT, virtual_size BIGINT, reclaimable BIGINT, rstatus TEXT COLLATE "C");
        CREATE INDEX disk_moves_id ON disk_moves (id, seq);
        CREATE INDEX disk_moves_xid ON disk_moves (xid);
        CREATE INDEX disk_moves_at ON disk_moves (at);
        CREATE FUNCTION disk_moved() RETURNS trigger LANGUAGE plpgsql AS $body$
        BEGIN
          INSERT INTO disk_moves (id, ${MOVED_COLUMNS}) VALUES (OLD.id, ${old});
          RETURN NULL;
        END $body$;
        CREATE TRIGGER disks_moved_update AFTER UPDATE ON disks FOR EACH ROW WHEN (${changed}) EXECUTE FUNCTION disk_moved();
        CREATE TRIGGER disks_moved_delete AFTER DELETE ON disks FOR EACH ROW EXECUTE FUNCTION disk_moved();`);
      return;
    }
    // SQLite has one writer at a time: the order of seq is the order of commits.
    const now = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)";
    await db.exec(`
      CREATE TABLE disk_moves (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, at BIGINT NOT NULL,
        present INTEGER, domain_id TEXT, first_seen BIGINT, name TEXT, actual_size BIGINT, virtual_size BIGINT, reclaimable BIGINT, rstatus TEXT);
      CREATE INDEX disk_moves_id ON disk_moves (id, seq);
      CREATE INDEX disk_moves_at ON disk_moves (at);
      CREATE TRIGGER disks_moved_update AFTER UPDATE ON disks WHEN ${changed} BEGIN
        INSERT INTO disk_moves (id, at, ${MOVED_COLUMNS}) VALUES (OLD.id, ${now}, ${old});
      END;
      CREATE TRIGGER disks_moved_delete AFTER DELETE ON disks BEGIN
        INSERT INTO disk_moves (id, at, ${MOVED_COLUMNS}) VALUES (OLD.id, ${now}, ${old});
      END;`);
  },
};

const v7: Migration = {
  version: 7,
  name: "the disk list's name search (q) reads an index of the names' trigrams: pg_trgm where the database has it, FTS5 in SQLite",
  async up(db) {
    if (db.dialect === 'postgres') {
      // pg_trgm ships with PostgreSQL and is trusted (a database owner may create it); where it cannot be, q reads along the sort's index.
      await db.exec(`DO $body$ BEGIN
          CREATE EXTENSION IF NOT EXISTS pg_trgm;
          CREATE INDEX disks_list_q ON disks USING gin (lower(name) gin_trgm_ops) WHERE present = 1;
        EXCEPTION WHEN OTHERS THEN RAISE NOTICE 'no trigram index for the disk list: %', SQLERRM;
        END $body$`);
      return;
    }
    // Keyed by the disks row's rowid; a match is checked against the row's name again, so the index can only narrow the search.
    await db.exec(`
      CREATE VIRTUAL TABLE disk_names USING fts5(name, tokenize = 'trigram');
      INSERT INTO disk_names (rowid, name) SELECT rowid, name FROM disks WHERE present = 1;
      CREATE TRIGGER disk_names_insert AFTER INSERT ON disks WHEN NEW.present = 1 BEGIN
        INSERT INTO disk_names (rowid, name) VALUES (NEW.rowid, NEW.name);
      END;
      CREATE TRIGGER disk_names_update AFTER UPDATE ON disks WHEN OLD.name IS NOT NEW.name OR OLD.present IS NOT NEW.present BEGIN
        DELETE FROM disk_names WHERE rowid = OLD.rowid;
        INSERT INTO disk_names (rowid, name) SELECT NEW.rowid, NEW.name WHERE NEW.present = 1;
      END;
      CREATE TRIGGER disk_names_delete AFTER DELETE ON disks BEGIN
        DELETE FROM disk_names WHERE rowid = OLD.rowid;
      END;`);
  },
};

export const MIGRATIONS: readonly Migration[] = [v1, v2, v3, v4, v5, v6, v7];
export const SCHEMA_VERSION = MIGRATIONS[MIGRATIONS.length - 1]!.version;

async function tableExists(db: Db, name: string): Promise<boolean> {
  const sql =
    db.dialect === 'sqlite'
      ? "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?"
      : 'SELECT tablename AS name FROM pg_tables WHERE schemaname = current_schema() AND tablename = ?';
  return (await db.get(sql, [name])) !== undefined;
}

async function currentVersion(db: Db): Promise<number> {
  if (!(await tableExists(db, 'schema_migrations'))) {
    await db.exec('CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)');
    // 0.1.0 made its tables without recording a version.
    if (await tableExists(db, 'disks')) await db.run('INSERT INTO schema_migrations (version, name, applied_at) VALUES (1, ?, ?)', [v1.name, Date.now()]);
  }
  const r = await db.get<{ v: number | null }>('SELECT MAX(version) AS v FROM schema_migrations');
  return r?.v ?? 0;
}

/** Bring the schema to SCHEMA_VERSION; each migration commits on its own. Returns the versions. */
export async function migrate(db: Db, migrations: readonly Migration[] = MIGRATIONS): Promise<{ from: number; to: number }> {
  const body = async (conn: Db) => {
    const from = await currentVersion(conn);
    const latest = migrations[migrations.length - 1]!.version;
    if (from > latest) throw new DbFatalError(`the database has schema version ${from}, newer than this sparsify knows (${latest}): upgrade sparsify on this host`);
    for (const m of migrations) {
      if (m.version <= from) continue;
      await conn.transaction(async (tx) => {
        await m.up(tx);
        await tx.run('INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)', [m.version, m.name, Date.now()]);
      });
    }
    return { from, to: Math.max(from, latest) };
  };
  return db instanceof PgDb ? db.withAdvisoryLock(MIGRATION_LOCK, body) : body(db);
}
