/**
 * The store's transitions against both databases: a job is claimed by exactly one of many
 * concurrent claimants, a stale attempt is fenced out of every write, a disk is locked by one
 * job at a time, a cluster duty's slot goes to one host per interval, and a live host's name is
 * not taken by a second process.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { tempDir, releaseAll } from '../helpers/fixtures.js';
import { startPostgres, postgresMissing, type PgCluster } from '../helpers/postgres.js';
import { openStore, type Store } from '../../src/service/store/store.js';
import type { DiskRecord } from '../../src/service/store/records.js';
import * as lifecycle from '../../src/service/jobs/lifecycle.js';
import { fencedWrite, assertCurrent, fenceOf, FencedOut } from '../../src/service/jobs/fence.js';
import type { JobQueue } from '../../src/service/queue/types.js';
import { SCHEMA_VERSION } from '../../src/service/store/migrations.js';

const noQueue: JobQueue = { kind: 'test', send: async () => undefined, fetch: async () => [], prepare: async () => undefined, start: async () => undefined, stop: async () => undefined };

function disk(domainId: string, rel: string): DiskRecord {
  const now = Date.now();
  return {
    id: randomUUID(), domainId, rel, name: rel, ino: Math.floor(Math.random() * 1e9), size: 1, mtimeMs: now, ctimeMs: now, format: 'raw', virtualSize: 1, actualSize: 4096, hostDataBytes: 4096,
    chain: [], backingRef: null, backingId: null, snapshots: 0, health: 'ok', error: null, allocationOverride: null, analysis: null, analysisKey: null, analysisError: null, analyzedAt: null,
    inUse: false, lockedBy: null, present: true, firstSeen: now, lastSeen: now,
  };
}

const backends: Array<{ name: string; skip?: string }> = [{ name: 'sqlite' }, { name: 'postgres', skip: postgresMissing() }];

for (const backend of backends) {
  describe(`store on ${backend.name}`, { skip: backend.skip, timeout: 120_000 }, () => {
    let pg: PgCluster | undefined;
    let tmp: { dir: string; cleanup: () => void };
    let store: Store;
    const log = () => undefined;

    before(async () => {
      tmp = tempDir('sparsify-store-');
      if (backend.name === 'postgres') pg = await startPostgres();
      const opened = await openStore({ databaseUrl: pg?.url, dataDir: join(tmp.dir, 'data'), hostName: 'test', log });
      store = opened.store;
      assert.deepEqual(opened.migrated, { from: 0, to: SCHEMA_VERSION });
    });

    after(() =>
      releaseAll(
        () => store?.close(),
        () => pg?.stop(),
        () => tmp?.cleanup(),
      ),
    );

    it('hands a job to exactly one of many concurrent claimants, and fences out the stale attempt', async () => {
      const d = disk('dom-1', 'a.raw');
      await store.disks.put(d);
      const job = lifecycle.newJob(d, { mode: 'in-place', ignore: [], zero: [] }, 'api');
      assert.equal(await store.transaction((tx) => lifecycle.create(tx, noQueue, job)), true);
      // A second job for the same disk cannot lock it.
      const other = lifecycle.newJob(d, { mode: 'in-place', ignore: [], zero: [] }, 'api');
      assert.equal(await store.transaction((tx) => lifecycle.create(tx, noQueue, other)), false);
      assert.equal(await store.jobs.get(other.id), undefined, 'the refused job was not recorded');

      const claims = await Promise.all(['h1', 'h2', 'h3', 'h4', 'h5', 'h6'].map((h) => lifecycle.claim(store, job.id, h)));
      const won = claims.filter((c) => c !== undefined);
      assert.equal(won.length, 1, 'exactly one claim wins');
      const first = won[0]!;
      assert.equal(first.attempts, 1);
      await fencedWrite(store, first, fenceOf(first));

      // The host dies; another takes the job over and claims it again.
      const taken = await lifecycle.takeOver(store, noQueue, { ...first }, { reason: 'h stopped responding', rerun: true, maxAttempts: 3, outcome: 'taken-over' });
      assert.equal(taken, 'requeued');
      const second = await lifecycle.claim(store, job.id, 'h-other');
      assert.ok(second);
      assert.equal(second.attempts, 2);
      // The first host comes back: every write of its attempt is refused.
      await assert.rejects(fencedWrite(store, first, fenceOf(first)), FencedOut);
      await assert.rejects(assertCurrent(store, fenceOf(first)), FencedOut);
      await assert.rejects(lifecycle.end(store, { ...first }, fenceOf(first), 'finished', null), FencedOut);
      assert.equal((await store.disks.get(d.id))!.lockedBy, job.id, 'the stale end did not unlock the disk');
      // The current attempt ends the job and unlocks the disk, once.
      await lifecycle.end(store, second, fenceOf(second), 'finished', null);
      assert.equal((await store.disks.get(d.id))!.lockedBy, null);
      const attempts = await store.jobs.attempts({ jobId: job.id });
      assert.deepEqual(attempts.map((a) => `${a.attempt}:${a.host}:${a.outcome}`), [`1:${first.host}:taken-over`, '2:h-other:finished']);
      assert.ok(attempts[0]!.endedAt! <= attempts[1]!.startedAt, 'attempts do not overlap');
    });

    it('takes over a job once however many hosts try, and a cancel asked meanwhile wins', async () => {
      const d = disk('dom-1', 'b.raw');
      await store.disks.put(d);
      const job = lifecycle.newJob(d, { mode: 'copy-and-replace', ignore: [], zero: [] }, 'api');
      await store.transaction((tx) => lifecycle.create(tx, noQueue, job));
      const running = (await lifecycle.claim(store, job.id, 'dead'))!;
      assert.equal(await store.jobs.requestCancel(job.id), true);
      const fresh = (await store.jobs.get(job.id))!;
      const results = await Promise.all([1, 2, 3].map(() => lifecycle.takeOver(store, noQueue, { ...fresh }, { reason: 'dead stopped responding', rerun: true, maxAttempts: 3, outcome: 'taken-over' })));
      assert.deepEqual(results.filter(Boolean), ['cancelled']);
      assert.equal((await store.jobs.get(job.id))!.status, 'cancelled');
      assert.equal((await store.disks.get(d.id))!.lockedBy, null);
      await assert.rejects(fencedWrite(store, running, fenceOf(running)), FencedOut);
    });

    it('gives a cluster duty to one host per interval', async () => {
      const got = await Promise.all(Array.from({ length: 8 }, () => store.settings.claimSlot('duty', 60_000)));
      assert.equal(got.filter(Boolean).length, 1);
      assert.equal(await store.settings.claimSlot('duty', 60_000), false);
      assert.equal(await store.settings.claimSlot('duty', 0), true, 'a zero interval is always due');
    });

    it('keeps a live host name from a second process, and lets it go when the first stops', async () => {
      const h = { name: 'alpha', version: '1', url: null, startedAt: Date.now(), concurrency: 1 };
      assert.deepEqual(await store.hosts.register({ ...h, instance: 'one' }, 30_000), { ok: true });
      const second = await store.hosts.register({ ...h, instance: 'two' }, 30_000);
      assert.equal(second.ok, false);
      await store.hosts.markStopped('alpha', 'one');
      assert.deepEqual(await store.hosts.register({ ...h, instance: 'two' }, 30_000), { ok: true });
      assert.equal(await store.hosts.heartbeat('alpha', 'one'), false, 'the old instance no longer beats for it');
      assert.equal(await store.hosts.heartbeat('alpha', 'two'), true);
      assert.deepEqual(await store.hosts.sweep(60_000), []);
      assert.deepEqual(await store.hosts.sweep(-1), ['alpha'], 'a host past its timeout becomes non-responsive');
      assert.equal((await store.hosts.get('alpha'))!.status, 'non-responsive');
    });

    it('keeps each host’s VMs apart: a read replaces that host’s, a failed read keeps them, a retired host’s go', async () => {
      const vm = (host: string, uuid: string, state: 'running' | 'shut-off') => ({
        host, uuid, name: `vm-${uuid.slice(0, 4)}`, state, reason: null,
        disks: [{ target: 'vda', device: 'disk', type: 'file', source: '/srv/a.raw', domainId: 'dom-1', rel: 'a.raw' }],
      });
      const u1 = randomUUID();
      const u2 = randomUUID();
      await store.vms.replace('h1', 'qemu:///system', [vm('h1', u1, 'running'), vm('h1', u2, 'shut-off')]);
      await store.vms.replace('h2', 'qemu:///system', [vm('h2', u1, 'shut-off')]);
      assert.equal((await store.vms.list()).length, 3);
      await store.vms.replace('h1', 'qemu:///system', [vm('h1', u1, 'shut-off')]);
      assert.deepEqual((await store.vms.list()).map((v) => `${v.host}:${v.uuid === u1}:${v.state}`).sort(), ['h1:true:shut-off', 'h2:true:shut-off']);
      assert.deepEqual((await store.vms.list())[0]!.disks[0], vm('h1', u1, 'running').disks[0]);
      await store.vms.touch('h2', 'qemu:///system', 'libvirtd is down');
      assert.equal((await store.vms.list()).length, 2, 'a failed read keeps the VMs');
      assert.equal((await store.vms.inventories()).find((i) => i.host === 'h2')!.error, 'libvirtd is down');
      assert.equal(await store.vms.forgetHost('h2'), 1);
      assert.deepEqual((await store.vms.inventories()).map((i) => i.host), ['h1']);
    });
  });
}
