/**
 * What the scanner's batched writes rely on, against both databases: a disk record reads back as
 * it was written (the columns assigned onto the decoded JSON, no stat key leaking in), and a batch
 * of analyses stores only those still current (same file version, no job holding the disk), telling
 * the bus of exactly those. Also the time slice the scan loops yield by.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { tempDir, releaseAll } from '../helpers/fixtures.js';
import { startPostgres, postgresMissing, type PgCluster } from '../helpers/postgres.js';
import { openStore, type Store } from '../../src/service/store/store.js';
import type { DiskRecord } from '../../src/service/store/records.js';
import { Bus, type BusMessage } from '../../src/service/bus.js';
import type { ServiceContext } from '../../src/service/context.js';
import { AnalysisWriter, type AnalysisResult } from '../../src/service/domains/analysis-writer.js';
import { recordKey } from '../../src/service/domains/stat-key.js';
import { TimeSlice } from '../../src/service/domains/time-slice.js';

function disk(rel: string, extra: Partial<DiskRecord> = {}): DiskRecord {
  const now = Date.now();
  return {
    id: randomUUID(), domainId: 'dom-1', rel, name: rel, ino: Math.floor(Math.random() * 1e9), size: 1 << 20, mtimeMs: now + 0.25, ctimeMs: now + 0.5, format: 'qcow2', virtualSize: 1 << 30, actualSize: 8192, hostDataBytes: 4096,
    chain: [`/d/${rel}`, '/d/base.qcow2'], backingRef: { domainId: 'dom-2', rel: 'base.qcow2' }, backingId: null, snapshots: 2, health: 'ok', error: null, allocationOverride: null, subformat: 'v3', device: null,
    analysis: null, analysisKey: null, analysisError: null, analyzedAt: null, inUse: false, lockedBy: null, present: true, firstSeen: now, lastSeen: now, ...extra,
  };
}

const result = (d: DiskRecord, key = recordKey(d)): AnalysisResult => ({
  id: d.id, ino: d.ino, key,
  stored: { analysis: { dataBytes: 4096, reclaimableBytes: 1024, ownDataBytes: 4096, snapshotOnlyBytes: 0, warnings: [] }, analysisKey: key, analysisError: null, analyzedAt: Date.now() },
  map: null,
});

const backends: Array<{ name: string; skip?: string }> = [{ name: 'sqlite' }, { name: 'postgres', skip: postgresMissing() }];

for (const backend of backends) {
  describe(`scan writes on ${backend.name}`, { skip: backend.skip, timeout: 120_000 }, () => {
    let pg: PgCluster | undefined;
    let tmp: { dir: string; cleanup: () => void };
    let store: Store;

    before(async () => {
      tmp = tempDir('sparsify-scan-writes-');
      if (backend.name === 'postgres') pg = await startPostgres();
      store = (await openStore({ databaseUrl: pg?.url, dataDir: join(tmp.dir, 'data'), hostName: 'test', log: () => undefined })).store;
    });

    after(() =>
      releaseAll(
        () => store?.close(),
        () => pg?.stop(),
        () => tmp?.cleanup(),
      ),
    );

    it('reads a disk back as it was written, nested fields and all, in one transaction of many', { timeout: 60_000 }, async () => {
      const disks = [disk('a.qcow2'), disk('b.qcow2', { lockedBy: null, inUse: true, device: null, error: 'x' }), disk('c.qcow2')];
      await store.transaction(async (tx) => {
        for (const d of disks) await tx.disks.put(d);
      });
      for (const d of disks) {
        const back = await store.disks.get(d.id);
        assert.deepEqual(back, d);
        assert.equal(Object.hasOwn(back!, 'statKey'), false, 'the stored stat key stays in the database');
      }
      const many = await store.disks.getMany(disks.map((d) => d.id));
      assert.deepEqual(many.map((d) => d.backingRef), disks.map((d) => d.backingRef));
    });

    it('stores a batch of analyses only for disks still as analysed and not held by a job, and tells the bus of those', { timeout: 60_000 }, async () => {
      const current = disk('cur.raw');
      const locked = disk('locked.raw');
      const changed = disk('changed.raw');
      const moved = disk('moved.raw');
      for (const d of [current, locked, changed, moved]) await store.disks.put(d);
      assert.equal(await store.disks.lock(locked.id, randomUUID()), true);
      const bus = new Bus('test');
      const heard: string[] = [];
      bus.subscribe((m: BusMessage) => {
        if (m.type === 'disk') heard.push(m.id);
      });
      const warnings: string[] = [];
      const log = { info: () => undefined, debug: () => undefined, error: (s: string) => warnings.push(s), warn: (s: string) => warnings.push(s), child: () => log };
      const ctx = { store, bus, host: 'test', log } as unknown as ServiceContext;
      const writer = new AnalysisWriter(ctx);
      await writer.add(result(current));
      await writer.add(result(locked));
      // The file changed after it was analysed: its stat key is not the record's any more.
      await writer.add(result(changed, `${changed.ino}:1:2:3:4`));
      // Another file at the same place now (another inode).
      await writer.add({ ...result(moved), ino: moved.ino + 1 });
      await writer.flush();
      assert.deepEqual(warnings, []);
      assert.deepEqual(heard, [current.id]);
      assert.equal((await store.disks.get(current.id))!.analysis?.reclaimableBytes, 1024);
      assert.equal((await store.disks.get(current.id))!.analysisKey, recordKey(current));
      for (const d of [locked, changed, moved]) assert.equal((await store.disks.get(d.id))!.analysis, null, `${d.rel} keeps no analysis`);
      // Nothing waits: a second flush writes nothing.
      await writer.flush();
      assert.deepEqual(heard, [current.id]);
      await bus.close();
    });
  });
}

describe('time slice', { timeout: 10_000 }, () => {
  it('gives the event loop a turn only once its slice has run', { timeout: 5_000 }, async () => {
    const slice = new TimeSlice(20);
    let turns = 0;
    let stop = false;
    const tick = () => {
      turns++;
      if (!stop) setImmediate(tick);
    };
    setImmediate(tick);
    try {
      await slice.pause();
      assert.equal(turns, 0, 'no turn within the slice');
      const until = performance.now() + 25;
      while (performance.now() < until);
      await slice.pause();
      assert.ok(turns >= 1, 'a turn once the slice has run');
    } finally {
      stop = true;
    }
  });
});
