/**
 * The disk list's page queries at BENCH_LIST_DISKS (default 100,000) disks, straight against the
 * store (no HTTP, no scanner): SQLite, and PostgreSQL where it is installed. The rows are made in
 * SQL, with data the size of a real disk's (~700 bytes of JSON) and 1 in 200 needing sparsify.
 * Each shape is timed the way DiskPages.page reads it and, as the reference, the plain query the
 * database's planner picks by itself (the walk along the sort's index the list did before), in the
 * same run. Also: a cursor's page after 5% of the disks changed their sort key since its first page.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { openStore, type Store } from '../src/service/store/store.js';
import type { ListFilter, ListOverlay, Sort } from '../src/service/store/disk-pages.js';
import { decodeDisk, type DiskRow } from '../src/service/store/disks.js';
import { startPostgres, postgresMissing, type PgCluster } from '../test/helpers/postgres.js';

const DISKS = Number(process.env['BENCH_LIST_DISKS'] ?? 100_000);
const RUNS = 25;
const OVERLAY: ListOverlay = { unreachable: [], vmBusy: [], thresholdBytes: 5 * 2 ** 20, thresholdPercent: 10 };

export interface ListShape {
  name: string;
  p50: number;
  p95: number;
  /** The plain query's median (the planner's own choice), where it differs. */
  plainP50?: number;
}

export interface ListBenchResult {
  disks: number;
  backends: Array<{ backend: string; shapes: ListShape[] }>;
}

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(p * s.length))]!;
}

async function timeIt(fn: () => Promise<unknown>): Promise<{ p50: number; p95: number }> {
  // Warm: the first calls pay for compiling the code they run.
  for (let i = 0; i < 5; i++) await fn();
  const ts: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    const t = performance.now();
    await fn();
    ts.push(performance.now() - t);
  }
  return { p50: pct(ts, 0.5), p95: pct(ts, 0.95) };
}

async function fill(store: Store, n: number): Promise<void> {
  const pg = store.db.dialect === 'postgres';
  const rows = pg ? `generate_series(1::bigint, ${n}) AS g(x)` : `(WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < ${n}) SELECT x FROM g)`;
  const obj = pg ? 'json_build_object' : 'json_object';
  const pad = pg ? "repeat(md5(x::text), 19)" : 'hex(randomblob(300))';
  await store.db.exec(`INSERT INTO disks (id, domain_id, rel, ino, present, in_use, first_seen, data, analysis)
    SELECT 'disk-' || x, 'dom-' || (x % 10), 'images/' || x || '.raw', x, 1, 0, x,
      ${obj}('name', 'vm-' || (x * 7919 % ${n}) || '.raw', 'actualSize', 100 * 1048576, 'virtualSize', (x % 50 + 1) * 1073741824, 'health', 'ok', 'statKey', 'k', 'pad', ${pad})${pg ? '::text' : ''},
      ${obj}('summary', ${obj}('reclaimableBytes', CASE WHEN x % 200 = 0 THEN 50 * 1048576 ELSE x % 1000 END), 'key', 'k')${pg ? '::text' : ''}
    FROM ${rows}`);
  if (pg) await store.db.exec('ANALYZE disks');
}

async function shapes(store: Store): Promise<ListShape[]> {
  const out: ListShape[] = [];
  const one = async (name: string, f: ListFilter, sort: Sort) => {
    const ours = await timeIt(() => store.diskPages.page(f, OVERLAY, sort, undefined, 101));
    const q = store.diskPages.pageSql(f, OVERLAY, sort, undefined, 101);
    const plain = await timeIt(async () => (await store.db.all<DiskRow>(q.sql, q.args)).map(decodeDisk));
    out.push({ name, ...ours, plainP50: plain.p50 });
  };
  await one('first page, by name', {}, { field: 'name', desc: false });
  await one('by reclaimable, needs sparsify', { needsSparsify: true }, { field: 'reclaimable', desc: true });
  await one('by name, needs sparsify (1 in 200)', { needsSparsify: true }, { field: 'name', desc: false });
  await one('by name, q held by 11 names', { q: 'vm-1234' }, { field: 'name', desc: false });
  await one('by name, q held by none', { q: 'no-such-name' }, { field: 'name', desc: false });
  await one('by name, q held by all', { q: '.raw' }, { field: 'name', desc: false });
  // A cursor's page after a twentieth of the disks moved in the order since its first page.
  const sort: Sort = { field: 'reclaimable', desc: true };
  const first = await store.diskPages.page({}, OVERLAY, sort, undefined, 100);
  const last = first.rows[first.rows.length - 1]!;
  const after = { value: last.sortValue, id: last.record.id, mark: first.mark ?? undefined };
  const changed = Math.floor(DISKS / 20);
  await store.db.run('UPDATE disks SET analysis = ? WHERE first_seen % 20 = 7', [JSON.stringify({ summary: { reclaimableBytes: 3 }, key: 'k' })]);
  const t = await timeIt(() => store.diskPages.page({}, OVERLAY, sort, after, 100));
  out.push({ name: `second page of a cursor, ${changed} disks moved since its first`, ...t });
  return out;
}

export async function benchListPages(log: (s: string) => void): Promise<ListBenchResult> {
  const result: ListBenchResult = { disks: DISKS, backends: [] };
  for (const backend of ['sqlite', 'postgres']) {
    if (backend === 'postgres' && postgresMissing()) {
      log(`list pages: PostgreSQL not installed (${postgresMissing()}), skipped`);
      continue;
    }
    const dir = mkdtempSync(join(tmpdir(), 'sparsify-bench-list-'));
    let pg: PgCluster | undefined;
    let store: Store | undefined;
    try {
      if (backend === 'postgres') pg = await startPostgres();
      store = (await openStore({ databaseUrl: pg?.url, dataDir: join(dir, 'data'), hostName: 'bench', log: () => undefined })).store;
      const t = performance.now();
      await fill(store, DISKS);
      log(`list pages, ${backend}: ${DISKS} disks made in ${((performance.now() - t) / 1000).toFixed(1)} s`);
      result.backends.push({ backend, shapes: await shapes(store) });
    } finally {
      await store?.close();
      await pg?.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  }
  return result;
}

export function listTable(r: ListBenchResult): string[] {
  const lines = [`| list pages, ${r.disks} disks (ms) | backend | p50 / p95 | plain query p50 (the planner's own choice) |`, '|---|---|---|---|'];
  for (const b of r.backends) {
    for (const s of b.shapes) {
      const plain = s.plainP50 === undefined ? '' : `${s.plainP50.toFixed(2)} (${(s.p50 / s.plainP50).toFixed(2)}x)`;
      lines.push(`| ${s.name} | ${b.backend} | ${s.p50.toFixed(2)} / ${s.p95.toFixed(2)} | ${plain} |`);
    }
  }
  return lines;
}
