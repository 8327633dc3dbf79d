/**
 * The disk list's pages against both databases: every sort and filter agrees with a sort of the
 * whole list done here in JavaScript; paging while disks are added, removed and changed shows each
 * disk that stayed exactly once; the totals agree with a sum done here; and the query plans use
 * the indexes (no page reads the whole table, no sort of every row) where the database states them.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { tempDir, releaseAll } from '../helpers/fixtures.js';
import { startPostgres, postgresMissing, type PgCluster } from '../helpers/postgres.js';
import { openStore, type Store } from '../../src/service/store/store.js';
import type { DiskRecord } from '../../src/service/store/records.js';
import type { After, ListFilter, ListOverlay, ListStatus, Sort, SortField } from '../../src/service/store/disk-pages.js';
import { CursorTooOld } from '../../src/service/store/list-moves.js';

const DOMAINS = ['dom-a', 'dom-b', 'dom-c'];
const NAMES = ['alpha', 'Beta', 'gamma', 'delta-01', 'delta-02', 'zeta', 'Alpha', 'vm-web', 'vm-db', 'eta'];

let seq = 0;
function rnd(n: number): number {
  return Math.floor(Math.random() * n);
}

function disk(): DiskRecord {
  const now = Date.now();
  const i = seq++;
  // Repeated names and sizes: ties are broken by id.
  const name = `${NAMES[i % NAMES.length]}-${rnd(40)}.raw`;
  return {
    id: randomUUID(), domainId: DOMAINS[i % 3]!, rel: `d${i}/${name}`, name, ino: i + 1, size: 1 << 20, mtimeMs: now, ctimeMs: now, format: 'raw',
    virtualSize: i % 7 === 0 ? null : (1 + rnd(20)) * 2 ** 30, actualSize: rnd(50) * 2 ** 20, hostDataBytes: 0,
    chain: [], backingRef: null, backingId: null, snapshots: 0, health: i % 11 === 0 ? 'illegal' : 'ok', error: null, allocationOverride: null,
    analysis: null, analysisKey: null, analysisError: null, analyzedAt: null, inUse: i % 13 === 0, lockedBy: null, present: true, firstSeen: now + i, lastSeen: now,
  };
}

/** What the disk's reclaimable is after setAnalysis here (null: never analysed). */
const reclaimable = new Map<string, number | null>();

async function analyse(store: Store, d: DiskRecord): Promise<void> {
  // Some are never analysed; an analysed disk keeps an analysis.
  const r = rnd(4) === 0 && !reclaimable.has(d.id) ? null : rnd(30) * 2 ** 20;
  reclaimable.set(d.id, r);
  const key = `${d.ino}:${d.size}:${d.mtimeMs}:${d.ctimeMs}:${Math.ceil(d.actualSize / 512)}`;
  if (r === null) return;
  await store.disks.setAnalysis(d.id, d.ino, { analysis: { dataBytes: 0, reclaimableBytes: r, warnings: [] }, analysisKey: key, analysisError: null, analyzedAt: Date.now() }, null);
}

/** The status as the API derives it (views.ts), with the overlay. */
function statusOf(d: DiskRecord, locked: Set<string>, o: ListOverlay): ListStatus {
  if (locked.has(d.id)) return 'locked';
  if (o.unreachable.includes(d.domainId)) return 'unreachable';
  if (d.inUse || o.vmBusy.includes(d.id)) return 'in-use';
  if (d.health === 'illegal') return 'illegal';
  return 'ok';
}

const cmp = (a: string | number, b: string | number): number => (typeof a === 'string' ? Buffer.compare(Buffer.from(a), Buffer.from(b as string)) : a - (b as number));

function keyOf(d: DiskRecord, field: SortField, locked: Set<string>, o: ListOverlay, recl: Map<string, number | null>): string | number {
  switch (field) {
    case 'name':
      return d.name;
    case 'actualSize':
      return d.actualSize;
    case 'virtualSize':
      return d.virtualSize ?? -1;
    case 'reclaimable':
      return recl.get(d.id) ?? -1;
    case 'status':
      return statusOf(d, locked, o);
    default:
      return d.firstSeen;
  }
}

function expected(all: DiskRecord[], f: ListFilter, o: ListOverlay, sort: Sort, locked: Set<string>, recl = reclaimable): string[] {
  const needs = (d: DiskRecord) => {
    const r = recl.get(d.id) ?? -1;
    return r > 0 && r >= o.thresholdBytes && r * 100 >= o.thresholdPercent * d.actualSize;
  };
  return all
    .filter((d) => (f.domainId === undefined || d.domainId === f.domainId) && (!f.status || statusOf(d, locked, o) === f.status))
    .filter((d) => f.needsSparsify === undefined || needs(d) === f.needsSparsify)
    .filter((d) => !f.q || d.name.toLowerCase().includes(f.q.toLowerCase()))
    .filter((d) => !f.ids || f.ids.includes(d.id))
    .sort((a, b) => {
      const c = cmp(keyOf(a, sort.field, locked, o, recl), keyOf(b, sort.field, locked, o, recl)) || cmp(a.id, b.id);
      return sort.desc ? -c : c;
    })
    .map((d) => d.id);
}

async function allPages(store: Store, f: ListFilter, o: ListOverlay, sort: Sort, limit: number, between?: (page: number) => Promise<void>): Promise<string[]> {
  const out: string[] = [];
  let after: After | undefined;
  for (let page = 0; page < 10_000; page++) {
    const { rows, mark } = await store.diskPages.page(f, o, sort, after, limit);
    out.push(...rows.map((r) => r.record.id));
    if (rows.length < limit) return out;
    const last = rows[rows.length - 1]!;
    after = { value: last.sortValue, id: last.record.id, mark: mark ?? undefined };
    await between?.(page);
  }
  throw new Error('paging did not end');
}

const backends: Array<{ name: string; skip?: string }> = [{ name: 'sqlite' }, { name: 'postgres', skip: postgresMissing() }];

for (const backend of backends) {
  describe(`disk list pages on ${backend.name}`, { skip: backend.skip, timeout: 300_000 }, () => {
    let pg: PgCluster | undefined;
    let tmp: { dir: string; cleanup: () => void };
    let store: Store;
    const disks: DiskRecord[] = [];
    const locked = new Set<string>();
    const none: ListOverlay = { unreachable: [], vmBusy: [], thresholdBytes: 5 * 2 ** 20, thresholdPercent: 10 };

    before(async () => {
      tmp = tempDir('sparsify-pages-');
      if (backend.name === 'postgres') pg = await startPostgres();
      store = (await openStore({ databaseUrl: pg?.url, dataDir: join(tmp.dir, 'data'), hostName: 'test', log: () => undefined })).store;
      for (let i = 0; i < 600; i++) {
        const d = disk();
        await store.disks.put(d);
        await analyse(store, d);
        if (i % 17 === 0) {
          await store.disks.lock(d.id, `job-${i}`);
          locked.add(d.id);
        }
        disks.push(d);
      }
      if (backend.name === 'postgres') await store.db.exec('ANALYZE disks');
    });

    after(() =>
      releaseAll(
        () => store?.close(),
        () => pg?.stop(),
        () => tmp?.cleanup(),
      ),
    );

    it('sorts and filters as a sort of the whole list does, on every key, both ways, with and without the overlays', async () => {
      const busy: ListOverlay = { ...none, unreachable: ['dom-c'], vmBusy: disks.filter((_, i) => i % 9 === 0).map((d) => d.id) };
      const filters: ListFilter[] = [{}, { domainId: 'dom-b' }, { status: 'ok' }, { status: 'in-use' }, { status: 'locked' }, { status: 'unreachable' }, { status: 'illegal' }, { needsSparsify: true }, { needsSparsify: false }, { q: 'ALPHA' }, { q: 'lta-0' }, { q: 'a' }, { q: '_0' }, { q: 'a%' }, { q: 'e"t' }, { q: 'zz' }, { ids: disks.slice(0, 30).map((d) => d.id), status: 'ok' }, { domainId: 'dom-a', status: 'ok', needsSparsify: true }];
      for (const o of [none, busy]) {
        for (const field of ['name', 'actualSize', 'virtualSize', 'reclaimable', 'status'] as const) {
          for (const desc of [false, true]) {
            for (const f of filters) {
              const want = expected(disks, f, o, { field, desc }, locked);
              const got = await allPages(store, f, o, { field, desc }, 23);
              assert.deepEqual(got, want, `sort ${field}:${desc ? 'desc' : 'asc'}, filter ${JSON.stringify(f)}, overlay ${o === none ? 'none' : 'busy'}`);
            }
          }
        }
      }
    });

    it('shows each disk that stayed exactly once while disks are added, removed and changed between pages', async () => {
      for (const sort of [{ field: 'name', desc: false }, { field: 'reclaimable', desc: true }] as Sort[]) {
        const before = new Set(disks.map((d) => d.id));
        const removed = new Set<string>();
        const got = await allPages(store, {}, none, sort, 40, async (page) => {
          // Add two, remove one, and change what is not the sort key of three (lock, size, use).
          for (let k = 0; k < 2; k++) {
            const d = disk();
            await store.disks.put(d);
            await analyse(store, d);
            disks.push(d);
          }
          const victim = disks[(page * 37) % disks.length]!;
          if (!removed.has(victim.id) && !locked.has(victim.id)) {
            victim.present = false;
            await store.disks.put(victim);
            removed.add(victim.id);
          }
          for (let k = 0; k < 3; k++) {
            const d = disks[(page * 53 + k * 101) % disks.length]!;
            if (!d.present) continue;
            if (sort.field !== 'reclaimable') await analyse(store, d);
            d.inUse = !d.inUse;
            await store.disks.setInUse(d.id, d.inUse);
          }
        });
        const seen = new Set<string>();
        for (const id of got) {
          assert.ok(!seen.has(id), `disk ${id} shown twice (sort ${sort.field})`);
          seen.add(id);
        }
        for (const id of before) if (!removed.has(id)) assert.ok(seen.has(id), `disk ${id}, present throughout, was not shown (sort ${sort.field})`);
        for (let i = disks.length - 1; i >= 0; i--) if (!disks[i]!.present) disks.splice(i, 1);
      }
    });

    it('pages the list as its first page saw it while sort keys change: each disk once, in that order', async () => {
      const filters: ListFilter[] = [{}, { status: 'ok' }, { needsSparsify: true }];
      const lockedHere = new Set<string>();
      for (const field of ['name', 'actualSize', 'virtualSize', 'reclaimable', 'status'] as const) {
        for (const desc of [false, true]) {
          for (const f of filters) {
            const sort: Sort = { field, desc };
            // The list as the first page sees it.
            const then = { disks: disks.map((d) => ({ ...d })), reclaimable: new Map(reclaimable), locked: new Set(locked) };
            const removed = new Set<string>();
            const got = await allPages(store, f, none, sort, 17, async (page) => {
              // Every key of some disks changes, those shown and those to come alike, in both directions.
              for (let k = 0; k < 6; k++) {
                const d = disks[rnd(disks.length)]!;
                if (!d.present) continue;
                if (k === 0) d.name = `${NAMES[rnd(NAMES.length)]}-${rnd(40)}.raw`;
                if (k === 1) d.actualSize = rnd(50) * 2 ** 20;
                if (k === 2) d.virtualSize = rnd(3) === 0 ? null : (1 + rnd(20)) * 2 ** 30;
                if (k <= 2) await store.disks.put(d);
                // A new size is a new stat key: its analysis is made again, as the service would.
                if (k === 1) await analyse(store, d);
                if (k === 3) await analyse(store, d);
                if (k === 4) await store.disks.setInUse(d.id, (d.inUse = !d.inUse));
                if (k === 5 && lockedHere.delete(d.id)) {
                  await store.disks.unlock(d.id, 'mover');
                  locked.delete(d.id);
                } else if (k === 5 && (await store.disks.lock(d.id, 'mover'))) {
                  lockedHere.add(d.id);
                  locked.add(d.id);
                }
              }
              // One comes, one goes.
              const added = disk();
              await store.disks.put(added);
              await analyse(store, added);
              disks.push(added);
              const victim = disks[(page * 37 + 11) % disks.length]!;
              if (victim.present && !locked.has(victim.id)) {
                victim.present = false;
                await store.disks.put(victim);
                removed.add(victim.id);
              }
            });
            const what = `sort ${field}:${desc ? 'desc' : 'asc'}, filter ${JSON.stringify(f)}`;
            assert.equal(new Set(got).size, got.length, `${what}: a disk was shown twice`);
            const want = expected(then.disks, f, none, sort, then.locked, then.reclaimable).filter((id) => !removed.has(id));
            // Disks added since the first page may be shown (once: checked above); the others are shown as it saw them.
            const existed = new Set(then.disks.map((d) => d.id));
            assert.deepEqual(
              got.filter((id) => !removed.has(id) && existed.has(id)),
              want,
              `${what}: the pages are not the list as the first page saw it`,
            );
            for (let i = disks.length - 1; i >= 0; i--) if (!disks[i]!.present) disks.splice(i, 1);
          }
        }
      }
    });

    it('finds the few disks that need sparsify through the reclaimable index, in any order', { skip: backend.name !== 'sqlite' && 'PostgreSQL chooses by its statistics' }, async () => {
      for (const field of ['name', 'actualSize', 'status'] as const) {
        const plan = await store.diskPages.explain({ needsSparsify: true }, none, { field, desc: false }, undefined, 100);
        assert.match(plan, /SEARCH disks USING INDEX disks_list_reclaimable \(reclaimable>\?\)/, `${field}: ${plan}`);
      }
    });

    it('finds the few disks whose name holds q through the trigram index of the names', async () => {
      // (PostgreSQL's plan is checked with the indexes, on a site's worth of disks.)
      if (backend.name === 'sqlite') {
        const plan = await store.diskPages.explain({ q: 'ta-01-1' }, none, { field: 'name', desc: false }, undefined, 100);
        assert.match(plan, /SCAN disk_names VIRTUAL TABLE/, plan);
      }
      // A renamed or removed disk is found by its new name, or not at all.
      const d = disks.find((x) => x.present && !locked.has(x.id))!;
      const old = d.name;
      d.name = 'renamed-uniquely-xyzzy.raw';
      await store.disks.put(d);
      const by = async (q: string) => (await store.diskPages.page({ q }, none, { field: 'name', desc: false }, undefined, 10)).rows.map((r) => r.record.id);
      assert.deepEqual(await by('xyzzy'), [d.id]);
      assert.ok(!(await by(old)).includes(d.id));
      d.present = false;
      await store.disks.put(d);
      assert.deepEqual(await by('xyzzy'), []);
      d.present = true;
      await store.disks.put(d);
      assert.deepEqual(await by('XYZZY'), [d.id]);
    });

    it('refuses a cursor with more changes behind it than a page should read', async () => {
      const sort: Sort = { field: 'actualSize', desc: false };
      const first = await store.diskPages.page({}, none, sort, undefined, 10);
      const last = first.rows[first.rows.length - 1]!;
      const after: After = { value: last.sortValue, id: last.record.id, mark: first.mark ?? undefined };
      const saved = store.diskPages.limits.movesSinceMark;
      store.diskPages.limits.movesSinceMark = 5;
      try {
        for (const d of disks.filter((x) => x.present).slice(0, 5)) {
          d.actualSize += 4096;
          await store.disks.put(d);
          await analyse(store, d);
        }
        // Five disks moved (ten changes): more than five.
        await assert.rejects(store.diskPages.page({}, none, sort, after, 10), CursorTooOld);
      } finally {
        store.diskPages.limits.movesSinceMark = saved;
      }
      assert.equal((await store.diskPages.page({}, none, sort, after, 10)).rows.length, 10);
    });

    it('forgets moves older than any live cursor, and only those', async () => {
      const count = async () => Number((await store.db.get<{ n: number }>('SELECT COUNT(*) AS n FROM disk_moves'))!.n);
      const kept = await count();
      assert.ok(kept > 0, 'changes were kept');
      await store.diskPages.pruneMoves(Date.now());
      assert.equal(await count(), kept, 'moves younger than two hours stay');
      await store.diskPages.pruneMoves(Date.now() + 3 * 3600_000);
      assert.equal(await count(), 0, 'moves older than two hours go');
    });

    it('sums the totals per domain, status and analysis as a sum done here does', async () => {
      const o: ListOverlay = { ...none, unreachable: ['dom-a'] };
      const rows = await store.diskPages.summary(o);
      const count = (pred: (d: DiskRecord) => boolean) => disks.filter(pred).length;
      const sum = (pred: (d: DiskRecord) => boolean, f: (d: DiskRecord) => number) => disks.filter(pred).reduce((s, d) => s + f(d), 0);
      for (const dom of DOMAINS) {
        for (const st of ['ok', 'locked', 'in-use', 'illegal', 'unreachable'] as const) {
          const pred = (d: DiskRecord) => d.domainId === dom && statusOf(d, locked, o) === st;
          const mine = rows.filter((r) => r.domainId === dom && r.status === st);
          assert.equal(mine.reduce((s, r) => s + r.disks, 0), count(pred), `${dom} ${st} count`);
          assert.equal(mine.reduce((s, r) => s + r.actualBytes, 0), sum(pred, (d) => d.actualSize), `${dom} ${st} actual`);
          assert.equal(mine.reduce((s, r) => s + r.virtualBytes, 0), sum(pred, (d) => d.virtualSize ?? 0), `${dom} ${st} virtual`);
          assert.equal(mine.reduce((s, r) => s + r.reclaimableBytes, 0), sum(pred, (d) => reclaimable.get(d.id) ?? 0), `${dom} ${st} reclaimable`);
        }
      }
      // Analysed here means a summary under the record's own key; illegal disks count as failed.
      const done = rows.filter((r) => r.analysis === 'done').reduce((s, r) => s + r.disks, 0);
      assert.equal(done, count((d) => d.health !== 'illegal' && reclaimable.get(d.id) != null));
      const failed = rows.filter((r) => r.analysis === 'failed').reduce((s, r) => s + r.disks, 0);
      assert.equal(failed, count((d) => d.health === 'illegal'));
    });

    it('answers pages from the indexes: no sort of every row, no scan of the whole table', async () => {
      const plans: Array<[string, ListFilter, Sort]> = [];
      for (const field of ['name', 'actualSize', 'virtualSize', 'reclaimable', 'status'] as const) {
        plans.push([`sort ${field}`, {}, { field, desc: false }]);
        plans.push([`sort ${field} desc in a domain`, { domainId: 'dom-b' }, { field, desc: true }]);
        if (field !== 'status') plans.push([`sort ${field} of status ok`, { status: 'ok' }, { field, desc: false }]);
      }
      if (backend.name === 'postgres') {
        // A table of a few hundred rows is read whole by PostgreSQL whatever the indexes: give it a site's worth.
        await store.db.exec(`INSERT INTO disks (id, domain_id, rel, ino, present, in_use, first_seen, data, analysis)
          SELECT 'bulk-' || g, (ARRAY['dom-a', 'dom-b', 'dom-c'])[g % 3 + 1], 'bulk/' || g, g, 1, 0, g,
            json_build_object('name', 'bulk-' || g, 'actualSize', g * 4096, 'virtualSize', g * 8192, 'health', 'ok', 'statKey', 'k')::text,
            json_build_object('summary', json_build_object('reclaimableBytes', g * 100), 'key', 'k')::text
          FROM generate_series(1, 30000) AS g`);
        await store.db.exec('ANALYZE disks');
      }
      if (backend.name === 'postgres') {
        const plan = await store.diskPages.explain({ q: 'bulk-1234' }, none, { field: 'name', desc: false }, undefined, 100);
        assert.match(plan, /Bitmap Index Scan on disks_list_q/, plan);
        // A q most names hold reads along the sort's index (its estimate alone would go through the trigrams and sort them all).
        const common = await store.diskPages.explain({ q: 'bulk' }, none, { field: 'name', desc: false }, undefined, 100);
        assert.match(common, /Index Scan using disks_list_name/, common);
        assert.doesNotMatch(common, /disks_list_q|Sort/, common);
      }
      for (const [what, f, sort] of plans) {
        // Early in the list: most rows lie after the cursor, as they do for the pages people look at.
        const text = sort.field === 'name' || sort.field === 'status';
        const value = text ? (sort.desc ? '~' : '!') : sort.desc ? 2 ** 52 : -2;
        // A cursor's page also leaves out the disks that moved since its first page: one probe of the moves' index per row.
        for (const mark of [undefined, (await store.diskPages.page(f, none, sort, undefined, 1)).mark ?? undefined]) {
          const plan = await store.diskPages.explain(f, none, sort, { value, id: 'x', mark }, 100);
          if (backend.name === 'sqlite') {
            assert.match(plan, /USING (COVERING )?INDEX disks_list_/, `${what}: ${plan}`);
            assert.doesNotMatch(plan, /TEMP B-TREE/, `${what}: ${plan}`);
            assert.doesNotMatch(plan, /^SCAN disks$/m, `${what}: ${plan}`);
            if (mark !== undefined) assert.match(plan, /USING (COVERING )?INDEX disk_moves_id/, `${what}: ${plan}`);
          } else {
            assert.match(plan, /Index Scan( Backward)? using disks_list_/, `${what}: ${plan}`);
            assert.doesNotMatch(plan, /Seq Scan|Sort/, `${what}: ${plan}`);
            if (mark !== undefined) assert.match(plan, /disk_moves_id/, `${what}: ${plan}`);
          }
        }
      }
    });
  });
}
