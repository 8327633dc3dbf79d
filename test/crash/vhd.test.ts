/**
 * Power-cut states of in-place runs on VHD (qemu: vpc) images (harness.ts, scenario.ts). qemu-img
 * check does not support vpc, so each state is checked by qemu opening it (qemu-img info refuses a
 * block past the end of the file), a valid footer at the end equal to the copy at 0 (what our
 * reader reads; qemu reads the copy), and the guest oracle: qemu-img convert, e2fsck -fn, every
 * file's checksum. Discard alone also keeps qemu's rule for appending: everything past its append
 * point (the highest block end) reads as zero, in every state (compaction has short windows where
 * it does not: counted and reported). Most states come from images built here with 32 KiB blocks
 * (many blocks on a small, cheap disk); one scenario runs on qemu's own 2 MiB-block image.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { haveTool, run, runStatus, readBytes } from '../helpers/fixtures.js';
import { CRASH_TOOLS, crashTempDir, convertGuest, makeGuestDisk, runScenario, type GuestDisk } from './scenario.js';

const missing = CRASH_TOOLS.filter((t) => !haveTool(t));
const skip = missing.length ? `missing tools: ${missing.join(', ')}` : false;

const SMALL_BLOCK = 32 * 1024;

let work: { dir: string; cleanup: () => void };
/** 8 MiB: cheap states, for the hand-built images with small blocks. */
let small: GuestDisk;
/** 40 MiB: enough for qemu's 2 MiB blocks to be freed and moved. */
let big: GuestDisk;

before(() => {
  if (skip) return;
  work = crashTempDir('sparsify-crash-vhd-');
  small = makeGuestDisk(work.dir, 8, 'small.raw');
  big = makeGuestDisk(work.dir, 40, 'big.raw');
});
after(() => work?.cleanup());

/**
 * A dynamic VHD of a raw disk with `blockSize` blocks, built here because qemu-img only makes
 * 2 MiB blocks: small blocks give many scattered free blocks and many moves on a small, cheap
 * disk. Laid out as qemu lays its images out (footer copy, header, BAT at 1536, blocks in order,
 * footer); qemu-img compare checks it reads as the raw disk before it is used.
 */
function smallBlockVhd(raw: string, out: string, blockSize: number): string {
  const data = readFileSync(raw);
  if (data.length % 512) throw new Error('raw size not a multiple of 512');
  const entries = Math.ceil(data.length / blockSize);
  const footer = Buffer.alloc(512);
  footer.write('conectix', 0, 'latin1');
  footer.writeUInt32BE(2, 8);
  footer.writeUInt32BE(0x00010000, 12);
  footer.writeBigUInt64BE(512n, 16);
  footer.write('qem2', 28, 'latin1');
  footer.writeUInt32BE(0x00050003, 32);
  footer.write('Wi2k', 36, 'latin1');
  footer.writeBigUInt64BE(BigInt(data.length), 40);
  footer.writeBigUInt64BE(BigInt(data.length), 48);
  // The maximum geometry: readers take the size from current_size.
  footer.writeUInt16BE(65535, 56);
  footer.writeUInt8(16, 58);
  footer.writeUInt8(255, 59);
  footer.writeUInt32BE(3, 60);
  footer.write('sparsify-vhd-crash', 68, 'latin1');
  footer.writeUInt32BE(footerSum(footer), 64);
  const dh = Buffer.alloc(1024);
  dh.write('cxsparse', 0, 'latin1');
  dh.writeBigUInt64BE(0xffffffffffffffffn, 8);
  dh.writeBigUInt64BE(1536n, 16);
  dh.writeUInt32BE(0x00010000, 24);
  dh.writeUInt32BE(entries, 28);
  dh.writeUInt32BE(blockSize, 32);
  let sum = 0;
  for (const b of dh) sum += b;
  dh.writeUInt32BE(~sum >>> 0, 36);
  const batLen = Math.ceil((entries * 4) / 512) * 512;
  const bat = Buffer.alloc(batLen, 0xff);
  const bitmap = Buffer.alloc(Math.ceil(blockSize / 512 / 8 / 512) * 512, 0xff);
  const parts: Buffer[] = [footer, dh, bat];
  let next = 1536 + batLen;
  for (let i = 0; i < entries; i++) {
    const block = Buffer.alloc(blockSize);
    data.copy(block, 0, i * blockSize, Math.min(data.length, (i + 1) * blockSize));
    if (!block.some((b) => b !== 0)) continue;
    bat.writeUInt32BE(next / 512, i * 4);
    parts.push(bitmap, block);
    next += bitmap.length + blockSize;
  }
  parts.push(footer);
  writeFileSync(out, Buffer.concat(parts));
  run('qemu-img', ['compare', '-f', 'raw', '-F', 'vpc', raw, out]);
  return out;
}

/** The VHD checksum, computed here rather than with the code under test. */
function footerSum(f: Buffer): number {
  let sum = 0;
  for (let i = 0; i < f.length; i++) if (i < 64 || i >= 68) sum += f[i]!;
  return ~sum >>> 0;
}

/** qemu opens the state, and the file ends with a valid footer: the copy at 0, or the fixed disk's own. */
function opensWithFooter(state: string, fixedFooter?: Buffer): string[] {
  const info = runStatus('qemu-img', ['info', '-f', 'vpc', state]);
  if (info.status !== 0) return [`qemu-img info: ${info.stderr.trim()}`];
  const size = statSync(state).size;
  const tail = readBytes(state, size - 512, 512);
  if (tail.toString('latin1', 0, 8) !== 'conectix' || tail.readUInt32BE(64) !== footerSum(tail)) return [`no valid footer at the end (${size})`];
  const want = fixedFooter ?? readBytes(state, 0, 512);
  return tail.equals(want) ? [] : ['the footer at the end differs from the one it should be'];
}

/** qemu's append point in a state: the highest block end qemu maps (blocks of `block` bytes). */
function appendPoint(state: string, block: number): number {
  const map = JSON.parse(run('qemu-img', ['map', '--output=json', '-f', 'vpc', state])) as Array<{ start: number; data: boolean; offset?: number }>;
  let end = 0;
  for (const e of map) if (e.data && e.offset !== undefined) end = Math.max(end, e.offset - (e.start % block) + block);
  return end;
}

/** Everything between qemu's append point and the footer reads as zero. */
function zeroPastAppendPoint(state: string, block: number): string[] {
  const end = appendPoint(state, block);
  const size = statSync(state).size;
  if (end > size - 512) return [];
  const at = readBytes(state, end, size - 512 - end).findIndex((b) => b !== 0);
  return at < 0 ? [] : [`non-zero byte at ${end + at}, past qemu's append point ${end} (qemu would append a block over it)`];
}

test('power cut: dynamic vhd in place, discard (zero first, then the BAT)', { skip, timeout: 600_000 }, async (t) => {
  const pristine = smallBlockVhd(small.raw, join(work.dir, 'discard.vhd'), SMALL_BLOCK);
  const st = await runScenario({
    name: 'vhd-discard', format: 'vpc', pristine, guest: small, request: {},
    states: { seed: 17, prefixes: 12, randoms: 60 }, rerunEvery: 20,
    extra: (s) => [...opensWithFooter(s), ...zeroPastAppendPoint(s, SMALL_BLOCK)],
  });
  t.diagnostic(JSON.stringify(st));
  assert.deepEqual(st.problems, []);
  assert.ok(st.states >= 120, `${st.states} states`);
});

test('power cut: dynamic vhd in place --compact (moves, footer, truncation)', { skip, timeout: 600_000 }, async (t) => {
  let stale = 0;
  const pristine = smallBlockVhd(small.raw, join(work.dir, 'compact.vhd'), SMALL_BLOCK);
  const st = await runScenario({
    name: 'vhd-compact', format: 'vpc', pristine, guest: small, request: { compact: true },
    states: { seed: 29, prefixes: 8, randoms: 16, tearRate: 0.4 }, rerunEvery: 20,
    extra: (s) => {
      // Counted, not failed: the windows the discarder's opening comment names.
      if (zeroPastAppendPoint(s, SMALL_BLOCK).length) stale++;
      return opensWithFooter(s);
    },
  });
  t.diagnostic(JSON.stringify({ ...st, staleStates: stale }));
  assert.deepEqual(st.problems, []);
  assert.ok(st.states >= 200, `${st.states} states`);
  assert.equal(st.ops['truncate'], 1, 'the run cut the file');
});

test('power cut: qemu-made dynamic vhd (2 MiB blocks) in place --compact', { skip, timeout: 600_000 }, async (t) => {
  const pristine = convertGuest(big, 'vpc', join(work.dir, 'qemu.vhd'));
  const st = await runScenario({
    name: 'vhd-qemu', format: 'vpc', pristine, guest: big, request: { compact: true },
    states: { seed: 3, prefixes: 6, randoms: 16, tearRate: 0.4 }, rerunEvery: 20,
    extra: (s) => opensWithFooter(s),
  });
  t.diagnostic(JSON.stringify(st));
  assert.deepEqual(st.problems, []);
  assert.ok(st.states >= 30, `${st.states} states`);
  assert.equal(st.ops['truncate'], 1, 'the run cut the file');
});

test('power cut: fixed vhd in place (holes before the footer)', { skip, timeout: 600_000 }, async (t) => {
  const pristine = convertGuest(small, 'vpc', join(work.dir, 'fixed.vhd'), ['subformat=fixed']);
  const footer = readBytes(pristine, statSync(pristine).size - 512, 512);
  const st = await runScenario({
    name: 'vhd-fixed', format: 'vpc', pristine, guest: small, request: {},
    states: { seed: 5, prefixes: 4, randoms: 10 }, rerunEvery: 20,
    extra: (s) => opensWithFooter(s, footer),
  });
  t.diagnostic(JSON.stringify(st));
  assert.deepEqual(st.problems, []);
  assert.ok(st.states >= 10, `${st.states} states`);
});
