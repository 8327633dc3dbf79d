/**
 * Snapshots through the service: a qcow2 chain made with `qemu-img create -b`, the guest's changes
 * written and deleted through the overlay only (helpers/chain-fixtures.ts), two leaves over one
 * base in a storage domain. The disk list reports only the leaf's own free clusters as reclaimable
 * and the base's free space as held by snapshots, with the advice to merge; each leaf is sparsified
 * through the API (in place, and copy-and-replace keeping its backing file) and its actual size
 * drops; the base is refused. Oracle: qemu-img check on leaf and base, the base's bytes unchanged,
 * qemu-img info's backing file, and the guest's view checked by e2fsck, every file's checksum and
 * dumpe2fs's free list (no used byte reads differently).
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir, run, haveTool, allocatedBytes, releaseAll } from '../helpers/fixtures.js';
import { buildChainBase, buildLeaf, changedOutside, fileSha, freeRanges, guestView, type ChainBase } from '../helpers/chain-fixtures.js';
import { checkRawDisk, qemuCheck } from '../inplace/crash-helpers.js';
import { startServer, stopAllServers, http, analyzedDisks, diskByName, waitFor, type Server } from './service-helpers.js';

const MiB = 1 << 20;
const tools = ['qemu-img', 'qemu-io', 'sgdisk', 'mke2fs', 'e2fsck', 'debugfs', 'dumpe2fs'].filter((t) => !haveTool(t));

describe('the leaf of a qcow2 chain through the service', { skip: tools.length ? `missing tools: ${tools.join(', ')}` : false, timeout: 240_000 }, () => {
  let work: { dir: string; cleanup: () => void };
  let b: ChainBase;
  let domain: string;
  let server: Server;
  let disks: Array<Record<string, any>>;
  let view0: string;
  let free0: Array<{ start: number; end: number }>;
  let baseSha: string;

  before(async () => {
    work = tempDir('sparsify-service-chain-');
    b = buildChainBase(work.dir);
    buildLeaf(b, 'leaf-a.qcow2', 'compat=1.1');
    buildLeaf(b, 'leaf-b.qcow2', 'compat=1.1');
    view0 = guestView(join(work.dir, 'leaf-a.qcow2'), join(work.dir, 'view0.raw'));
    free0 = freeRanges(view0, b.parts, work.dir);
    // The chain moves into the domain whole: the leaves name their backing file relatively.
    domain = join(work.dir, 'images');
    mkdirSync(domain);
    for (const f of ['base.qcow2', 'leaf-a.qcow2', 'leaf-b.qcow2']) renameSync(join(work.dir, f), join(domain, f));
    baseSha = fileSha(join(domain, 'base.qcow2'));
    server = await startServer({ dataDir: join(work.dir, 'data'), domains: [domain], env: { SPARSIFY_LIBVIRT: 'none', SPARSIFY_THRESHOLD_BYTES: String(4 * MiB), SPARSIFY_THRESHOLD_PERCENT: '5' } });
    disks = await analyzedDisks(server, 3);
  });

  after(() =>
    releaseAll(
      () => server?.stop(),
      stopAllServers,
      () => work?.cleanup(),
    ),
  );

  /** The guest's view of a leaf reads as before in every used byte; the base is untouched. */
  function assertIntact(leaf: string): void {
    const c = qemuCheck(leaf);
    assert.equal(c.status, 0, c.output);
    const view = guestView(leaf, join(work.dir, `view-${Math.random().toString(36).slice(2)}.raw`));
    try {
      assert.deepEqual(checkRawDisk(view, b.parts, work.dir), []);
      assert.deepEqual(changedOutside(view0, view, free0), [], 'used bytes changed');
    } finally {
      run('rm', ['-f', view]);
    }
    const base = join(domain, 'base.qcow2');
    assert.equal(fileSha(base), baseSha, 'the base changed');
    assert.equal(qemuCheck(base).status, 0);
    const info = JSON.parse(run('qemu-img', ['info', '--output=json', leaf])) as { 'backing-filename'?: string; 'backing-filename-format'?: string };
    assert.equal(info['backing-filename'], 'base.qcow2');
    assert.equal(info['backing-filename-format'], 'qcow2');
  }

  async function sparsify(name: string, mode: string): Promise<Record<string, any>> {
    const r = await http(server, 'POST', `/api/disks/${diskByName(disks, name).id}/sparsify`, { mode });
    assert.equal(r.status, 202, JSON.stringify(r.body));
    const job = await waitFor('the job to end', async () => {
      const j = (await http(server, 'GET', `/api/jobs/${r.body.job.id}`)).body.job;
      return j.status === 'pending' || j.status === 'running' ? undefined : j;
    }, 90_000);
    assert.equal(job.status, 'finished', job.error);
    return job;
  }

  it('reports the leaf’s own free clusters as reclaimable, and the snapshots’ free space apart with the advice', () => {
    const leaf = diskByName(disks, 'leaf-a.qcow2');
    const base = diskByName(disks, 'base.qcow2');
    assert.equal(leaf.chain.depth, 2);
    assert.equal(leaf.chain.leaf, true);
    assert.equal(leaf.chain.backingId, base.id);
    // The 12 MiB file written and deleted through the overlay, not the base's hundreds of MiB of free space.
    assert.ok(leaf.reclaimableBytes >= b.leafGoneBytes * 0.9 && leaf.reclaimableBytes <= leaf.actualSize, `reclaimable ${leaf.reclaimableBytes}, actual ${leaf.actualSize}`);
    assert.ok(leaf.analysis.snapshotOnlyBytes > 15 * MiB, `snapshot-only ${leaf.analysis.snapshotOnlyBytes}`);
    assert.match(leaf.analysis.snapshotAdvice, /merge the snapshots first/);
    assert.equal(leaf.needsSparsify, true);
    assert.equal(leaf.sparsify.allowed, true);
    assert.equal(base.sparsify.code, 'disk-has-derived-disks');
  });

  it('refuses the base: it has derived disks', async () => {
    for (const mode of ['in-place', 'copy-and-replace']) {
      const r = await http(server, 'POST', `/api/disks/${diskByName(disks, 'base.qcow2').id}/sparsify`, { mode });
      assert.equal(r.status, 409);
      assert.equal(r.body.fault.code, 'disk-has-derived-disks');
      assert.match(r.body.fault.detail, /leaf-a\.qcow2.*leaf-b\.qcow2|leaf-b\.qcow2.*leaf-a\.qcow2/);
    }
  });

  for (const [name, mode] of [
    ['leaf-a.qcow2', 'in-place'],
    ['leaf-b.qcow2', 'copy-and-replace'],
  ] as const) {
    it(`sparsifies ${name} ${mode}: its actual size drops, the base and every used byte stay`, async (t) => {
      const path = join(domain, name);
      const du0 = allocatedBytes(path);
      const expected = diskByName(disks, name).reclaimableBytes as number;
      const job = await sparsify(name, mode);
      const du1 = allocatedBytes(path);
      t.diagnostic(`${name} ${mode}: actual size ${du0} -> ${du1} bytes (${((du0 - du1) / MiB).toFixed(1)} MiB given back; announced ${(expected / MiB).toFixed(1)} MiB)`);
      assert.equal(job.actualBefore, du0);
      assert.equal(job.actualAfter, du1);
      assert.ok(du0 - du1 >= b.leafGoneBytes * 0.9, `dropped by ${du0 - du1}`);
      assertIntact(path);
      const after = diskByName(await analyzedDisks(server, 3), name);
      assert.ok(after.reclaimableBytes < 1 * MiB, `left ${after.reclaimableBytes}`);
      assert.equal(after.chain.backingId, diskByName(disks, 'base.qcow2').id, 'still a leaf of the same base');
    });
  }
});
