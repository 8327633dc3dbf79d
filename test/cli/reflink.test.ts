/**
 * Copy mode on a host filesystem with reflinks (XFS, loop-mounted; needs root): kept data is shared
 * with the input instead of copied, for raw and qcow2 output, and the input is untouched.
 * Oracle: e2fsck -fn and debugfs file checksums on the output, qemu-img check, qemu-img compare
 * against a copy made without sharing, filefrag's "shared" flag, and the input's sha256.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { mkdirSync, readFileSync } from 'node:fs';
import { tempDir, run, runStatus, haveTool, fileContent, sha256 } from '../helpers/fixtures.js';
import { makeExtImage, e2fsck, extFileSums } from '../helpers/ext-fixtures.js';
import { sparsify } from '../helpers/cli.js';
import { sparsifyCopy } from '../../src/operations/copy.js';

const missing = ['mkfs.xfs', 'qemu-img', 'filefrag', 'mount'].filter((t) => !haveTool(t));
const skip = process.getuid?.() !== 0 ? 'needs root to loop-mount XFS' : missing.length ? `missing: ${missing.join(', ')}` : false;

describe('copy on a reflink host filesystem', { skip, timeout: 120_000 }, () => {
  let work: { dir: string; cleanup: () => void };
  let mnt = '';
  let mounted = false;
  let raw: string;
  let qcow: string;
  let sums: Map<string, string>;
  let inputSum: string;

  before(() => {
    work = tempDir('sparsify-reflink-');
    const host = join(work.dir, 'host.img');
    run('truncate', ['-s', '1G', host]);
    run('mkfs.xfs', ['-q', '-m', 'reflink=1', host]);
    mnt = join(work.dir, 'mnt');
    mkdirSync(mnt);
    run('mount', ['-o', 'loop', host, mnt]);
    mounted = true;
    raw = join(mnt, 'in.img');
    makeExtImage(raw, { type: 'ext4', sizeMiB: 64, files: { 'a.bin': fileContent('a', 5 << 20), 'b.bin': fileContent('b', 3 << 20), 'gone.bin': fileContent('g', 8 << 20) }, remove: ['gone.bin'] }, work.dir);
    qcow = join(mnt, 'in.qcow2');
    run('qemu-img', ['convert', '-O', 'qcow2', raw, qcow]);
    sums = extFileSums(raw, work.dir);
    inputSum = sha256(readFileSync(raw));
  });
  after(() => {
    try {
      if (mounted) run('umount', [mnt]);
    } finally {
      work?.cleanup();
    }
  });

  const cases = [
    { name: 'raw -> raw', input: () => raw, args: [] as string[], format: 'raw' },
    { name: 'raw -> qcow2', input: () => raw, args: ['--convert', 'qcow2'], format: 'qcow2' },
    { name: 'qcow2 -> qcow2', input: () => qcow, args: [], format: 'qcow2' },
  ];
  for (const c of cases) {
    test(`${c.name}: data shared with the input, same image as a plain copy, input untouched`, async () => {
      const out = join(mnt, `out-${c.format}-${c.name.length}`);
      const r = sparsify(['-v', ...c.args, c.input(), out]);
      assert.equal(r.status, 0, r.stderr);
      const shared = Number(/; (\d+) shared with the input by reflink/.exec(r.stdout + r.stderr)?.[1] ?? 0);
      assert.ok(shared > 8 << 20, `only ${shared} bytes shared:\n${r.stdout}${r.stderr}`);
      assert.match(run('filefrag', ['-v', out]), /shared/);

      const plain = join(mnt, `plain-${c.format}-${c.name.length}`);
      await sparsifyCopy({ input: c.input(), output: plain, convert: c.args[1], noTransfer: true });
      const cmp = runStatus('qemu-img', ['compare', '-f', c.format, '-F', c.format, plain, out]);
      assert.equal(cmp.status, 0, cmp.stdout + cmp.stderr);

      let asRaw = out;
      if (c.format === 'qcow2') {
        assert.equal(runStatus('qemu-img', ['check', out]).status, 0);
        asRaw = join(work.dir, 'check.img');
        run('qemu-img', ['convert', '-O', 'raw', out, asRaw]);
      }
      const fsck = e2fsck(asRaw);
      assert.equal(fsck.status, 0, fsck.output);
      assert.deepEqual(extFileSums(asRaw, work.dir), sums);
      assert.equal(sha256(readFileSync(raw)), inputSum, 'the input changed');
    });
  }
});
