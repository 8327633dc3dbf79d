/**
 * The service with LUKS keys: a keys file in the data folder, by volume UUID, of mode 0600 or the
 * service refuses to start. A disk whose volume has a key is analyzed and sparsified inside (the
 * output checked by cryptsetup alone, e2fsck and file checksums); one without a key is kept whole,
 * and the API says which. The passphrases never reach the output.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir, run, haveTool, fileContent, releaseAll } from '../helpers/fixtures.js';
import { makeExtImage, extFileSums, e2fsck } from '../helpers/ext-fixtures.js';
import { LUKS2_SLACK, encryptLuks2, luksDump, decryptWithCryptsetup, extFreeBytes, writeSecretFile } from '../helpers/luks-fixtures.js';
import { startServer, stopAllServers, http, analyzedDisks, diskByName, waitFor } from './service-helpers.js';

const skip = ['cryptsetup', 'mke2fs', 'debugfs'].find((t) => !haveTool(t));
const KEY_A = 'service key for a, never printed';
const KEY_B = 'key nobody gave the service';

describe('service with a LUKS keys file', { skip: skip ? `missing ${skip}` : false, timeout: 240_000 }, () => {
  let tmp: { dir: string; cleanup: () => void };
  let domain: string;
  let data: string;
  let sums: Map<string, string>;
  let fsFree: number;
  let dumpA: string;

  before(() => {
    tmp = tempDir('sparsify-service-luks-');
    domain = join(tmp.dir, 'images');
    data = join(tmp.dir, 'data');
    mkdirSync(domain, { recursive: true });
    mkdirSync(data, { recursive: true });
    for (const [name, key] of [['a.luks', KEY_A], ['b.luks', KEY_B]] as const) {
      const img = join(domain, name);
      makeExtImage(img, { type: 'ext4', sizeMiB: 40, files: { 'keep/a.bin': fileContent(name, 2 << 20), 'gone.bin': fileContent('gone', 12 << 20) }, remove: ['gone.bin'] }, tmp.dir, true);
      if (name === 'a.luks') {
        sums = extFileSums(img, tmp.dir);
        fsFree = extFreeBytes(img);
      }
      truncateSync(img, (40 << 20) + LUKS2_SLACK);
      encryptLuks2(img, { pbkdf: 'pbkdf2', passphrase: key });
    }
    dumpA = luksDump(join(domain, 'a.luks'));
    const uuid = run('cryptsetup', ['luksUUID', join(domain, 'a.luks')]).trim();
    writeSecretFile(join(data, 'luks-keys'), JSON.stringify({ [uuid]: KEY_A }), 0o644);
  });

  after(() => releaseAll(stopAllServers, () => tmp?.cleanup()));

  it('refuses to start while the keys file can be read by others', async () => {
    await assert.rejects(startServer({ dataDir: data, domains: [domain] }), (e: Error) => /exited \(1\)/.test(e.message) && /mode 0644.*must be mode 0600/.test(e.message) && !e.message.includes(KEY_A));
  });

  it('sparsifies inside the volume it has a key for, keeps the other whole, and says which', async () => {
    chmodSync(join(data, 'luks-keys'), 0o600);
    const server = await startServer({ dataDir: data, domains: [domain] });
    const disks = await analyzedDisks(server, 2);
    const a = diskByName(disks, 'a.luks');
    const b = diskByName(disks, 'b.luks');
    assert.deepEqual(a.analysis.encrypted, { opened: 1, keptWhole: 0 });
    assert.deepEqual(b.analysis.encrypted, { opened: 0, keptWhole: 1 });
    assert.ok(a.reclaimableBytes >= 0.9 * fsFree, `a: ${a.reclaimableBytes} of ${fsFree} free`);
    assert.ok(b.reclaimableBytes < 1 << 20, `b is kept whole: ${b.reclaimableBytes}`);

    const r = await http(server, 'POST', `/api/disks/${a.id}/sparsify`);
    assert.equal(r.status, 202, JSON.stringify(r.body));
    const job = await waitFor('the job to end', async () => {
      const j = (await http(server, 'GET', `/api/jobs/${r.body.job.id}`)).body.job;
      return j.status === 'finished' || j.status === 'failed' ? j : undefined;
    }, 60_000);
    assert.equal(job.status, 'finished', job.error);
    assert.ok(job.bytesReclaimed >= 0.9 * fsFree, `gave back ${job.bytesReclaimed} of ${fsFree}`);
    // cryptsetup alone decrypts it: the same header, a clean filesystem, the same files.
    assert.equal(luksDump(join(domain, 'a.luks')), dumpA);
    const plain = join(tmp.dir, 'a-plain.img');
    decryptWithCryptsetup(join(domain, 'a.luks'), plain, tmp.dir, KEY_A);
    assert.equal(e2fsck(plain).status, 0, e2fsck(plain).output);
    assert.deepEqual(extFileSums(plain, tmp.dir), sums);
    await server.stop();
    assert.ok(!server.output().includes(KEY_A) && !server.output().includes(KEY_B), 'no passphrase in the output');
  });
});
