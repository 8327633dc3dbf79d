/**
 * Formats through the CLI: every output format from a qcow2 chain, checked by qemu-img against
 * the raw sparsified output of the same input; -o validation; --compress; raw never reinterpreted.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { tempDir, fileContent, run, runStatus } from '../helpers/fixtures.js';
import { buildDisk } from '../helpers/disk-builder.js';
import { sparsify } from '../helpers/cli.js';

const P = { type: 'ext4' as const, files: { 'keep.bin': fileContent('k', 3 << 20), 'gone.bin': fileContent('g', 8 << 20) }, remove: ['gone.bin'] };

function info(path: string): { format: string; 'virtual-size': number; 'format-specific'?: { data?: Record<string, unknown> }; 'backing-filename'?: string } {
  return JSON.parse(run('qemu-img', ['info', '--output=json', path]));
}

test('every output format from a 3-layer qcow2 chain equals the raw sparsified copy', { timeout: 300_000 }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const raw = join(dir, 'disk.img');
    buildDisk(raw, { sizeMiB: 48, label: 'gpt', garbage: true, workDir: dir, parts: [{ sizeMiB: 40, ext: P }] });
    const base = join(dir, 'base.qcow2');
    run('qemu-img', ['convert', '-O', 'qcow2', '-o', 'compat=0.10', raw, base]);
    run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', join(dir, 'mid.qcow2')]);
    run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'mid.qcow2', '-F', 'qcow2', join(dir, 'top.qcow2')]);
    // The top layers rewrite the partition table area's gap (kept) so the chain matters.
    run('qemu-io', ['-c', 'write -P 0x42 40960 4096', join(dir, 'mid.qcow2')]);
    run('qemu-io', ['-c', 'write -P 0x43 45056 4096', join(dir, 'top.qcow2')]);

    const reference = join(dir, 'ref.img');
    let r = sparsify(['-q', join(dir, 'top.qcow2'), reference, '--convert', 'raw']);
    assert.equal(r.status, 0, r.stderr);
    const flat = join(dir, 'flat.img');
    run('qemu-img', ['convert', '-O', 'raw', join(dir, 'top.qcow2'), flat]);
    // The kept regions come from the chain: the top layers' writes are there.
    assert.equal(runStatus('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', flat, reference]).status, 1, 'free space was zeroed, so they differ');

    const outputs: Array<[string, string[], string]> = [
      ['qcow2', [], 'qcow2'],
      ['qcow2', ['-o', 'cluster_size=4096,compat=0.10'], 'qcow2'],
      ['qcow2', ['--compress'], 'qcow2'],
      ['vdi', [], 'vdi'],
      ['vmdk', [], 'vmdk'],
      ['vmdk', ['-o', 'subformat=streamOptimized'], 'vmdk'],
      ['vpc', [], 'vpc'],
      ['vhdx', [], 'vhdx'],
    ];
    for (const [fmt, extra, qemuName] of outputs) {
      const out = join(dir, `out-${fmt}-${extra.join('')}.${fmt}`);
      r = sparsify(['-q', join(dir, 'top.qcow2'), out, '--convert', fmt, ...extra]);
      assert.equal(r.status, 0, `${fmt} ${extra}: ${r.stderr}`);
      const i = info(out);
      assert.equal(i.format, qemuName);
      assert.equal(i['backing-filename'], undefined, 'the chain is flattened');
      if (fmt !== 'vpc') {
        const chk = runStatus('qemu-img', ['check', '-f', qemuName, out]);
        assert.equal(chk.status, 0, `${fmt}: ${chk.stdout}${chk.stderr}`);
      }
      const cmp = runStatus('qemu-img', ['compare', '-f', 'raw', '-F', qemuName, reference, out]);
      assert.equal(cmp.status, 0, `${fmt} ${extra}: ${cmp.stdout}${cmp.stderr}`);
    }
    // Default output format is the input's.
    r = sparsify(['-q', join(dir, 'top.qcow2'), join(dir, 'same.qcow2')]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(info(join(dir, 'same.qcow2')).format, 'qcow2');
  } finally {
    cleanup();
  }
});

test('-o: an unknown key or bad value is a clear error listing the valid keys; nothing is left behind', { timeout: 300_000 }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const raw = join(dir, 'disk.img');
    buildDisk(raw, { sizeMiB: 16, label: 'gpt', garbage: true, workDir: dir, parts: [{ sizeMiB: 8, ext: { type: 'ext4', files: {} } }] });
    let r = sparsify(['-q', raw, join(dir, 'o.qcow2'), '--convert', 'qcow2', '-o', 'clustersize=4096']);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /clustersize/);
    assert.match(r.stderr, /cluster_size/);
    r = sparsify(['-q', raw, join(dir, 'o.qcow2'), '--convert', 'qcow2', '-o', 'cluster_size=1000']);
    assert.equal(r.status, 1);
    r = sparsify(['-q', raw, join(dir, 'o.x'), '--convert', 'nosuchformat']);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /output format 'nosuchformat' is not supported yet/);
    assert.equal(run('ls', ['-A', dir]).split('\n').filter((f) => /^o\.|sparsify-/.test(f)).length, 0);
  } finally {
    cleanup();
  }
});

test('with --format raw a qcow2 file is copied as raw bytes and its backing file is never opened', { timeout: 300_000 }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const img = join(dir, 'evil.qcow2');
    run('qemu-img', ['create', '-q', '-f', 'qcow2', '-u', '-b', '/nonexistent/secret.img', '-F', 'raw', img, '64M']);
    const r = sparsify(['-q', '--format', 'raw', img, join(dir, 'out.img')]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(runStatus('cmp', [img, join(dir, 'out.img')]).status, 0, 'identical bytes');
    const r2 = sparsify(['-q', img, join(dir, 'out2.img')]);
    assert.equal(r2.status, 1);
    assert.match(r2.stderr, /backing file of .*evil\.qcow2: cannot open \/nonexistent\/secret\.img: ENOENT/);
  } finally {
    cleanup();
  }
});
