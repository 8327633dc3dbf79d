/**
 * Power-cut states of in-place runs on qcow2 (harness.ts, scenario.ts): the discard alone, with
 * compaction (data, L2 tables, compressed fragments), the leaf of a backing chain, and an image
 * with an enabled persistent dirty bitmap. qemu-img check may report leaks, never corruption;
 * every state keeps every file; a rerun leaves each state fully clean.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { tempDir, haveTool, run, garbageFile } from '../helpers/fixtures.js';
import { CRASH_TOOLS, makeGuestDisk, convertGuest, runScenario, type GuestDisk, type Scenario } from './scenario.js';
import { statSync } from 'node:fs';

const missing = CRASH_TOOLS.filter((t) => !haveTool(t));
const skip = missing.length ? `missing tools: ${missing.join(', ')}` : false;

let work: { dir: string; cleanup: () => void };
let guest: GuestDisk;

before(() => {
  if (skip) return;
  work = tempDir('sparsify-crash-qcow2-');
  guest = makeGuestDisk(work.dir);
});
after(() => work?.cleanup());

async function check(t: { diagnostic(m: string): void }, s: Omit<Scenario, 'guest'>, minStates: number): Promise<void> {
  const st = await runScenario({ ...s, guest });
  t.diagnostic(`${s.name}: ${st.states} states over ${st.epochs} epochs (${st.distinctGuests} distinct guest contents), ${st.leaks} with leaks, ${st.reruns} reruns; ops ${JSON.stringify(st.ops)}`);
  assert.deepEqual(st.problems, []);
  assert.ok(st.states >= minStates, `only ${st.states} states`);
}

test('power cut: qcow2 discard, 512-byte clusters', { skip, timeout: 900_000 }, async (t) => {
  const pristine = convertGuest(guest, 'qcow2', join(work.dir, 'd512.qcow2'), ['cluster_size=512']);
  await check(t, { name: 'qcow2-discard', format: 'qcow2', pristine, request: {}, states: { seed: 7, prefixes: 2, randoms: 3 }, rerunEvery: 12 }, 100);
});

test('power cut: qcow2 --compact, 4 KiB clusters', { skip, timeout: 900_000 }, async (t) => {
  const pristine = convertGuest(guest, 'qcow2', join(work.dir, 'c4k.qcow2'), ['cluster_size=4096']);
  await check(t, { name: 'qcow2-compact', format: 'qcow2', pristine, request: { compact: true }, states: { seed: 11, prefixes: 6, randoms: 20 }, rerunEvery: 8 }, 100);
});

test('power cut: qcow2 --compact of compressed clusters', { skip, timeout: 900_000 }, async (t) => {
  const pristine = join(work.dir, 'z.qcow2');
  run('qemu-img', ['convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=4096', guest.raw, pristine]);
  await check(t, { name: 'qcow2-compressed', format: 'qcow2', pristine, request: { compact: true }, states: { seed: 13, prefixes: 6, randoms: 20 }, rerunEvery: 8 }, 60);
});

test('power cut: qcow2 --compact of a backing chain\'s leaf', { skip, timeout: 900_000 }, async (t) => {
  const base = join(work.dir, 'base.raw');
  garbageFile(base, statSync(guest.raw).size);
  const pristine = join(work.dir, 'leaf.qcow2');
  run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'compat=1.1,cluster_size=4096', '-b', 'base.raw', '-F', 'raw', pristine]);
  run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'qcow2', guest.raw, pristine]);
  await check(t, { name: 'qcow2-leaf', format: 'qcow2', pristine, request: { compact: true }, states: { seed: 17, prefixes: 6, randoms: 20 }, rerunEvery: 8 }, 60);
});

test('power cut: qcow2 --compact with an enabled persistent dirty bitmap', { skip, timeout: 900_000 }, async (t) => {
  const pristine = convertGuest(guest, 'qcow2', join(work.dir, 'bm.qcow2'), ['cluster_size=4096']);
  run('qemu-img', ['bitmap', '--add', '-g', '65536', pristine, 'backup0']);
  const extra = (state: string): string[] => {
    const info = JSON.parse(run('qemu-img', ['info', '--output=json', state])) as { 'format-specific'?: { data?: { bitmaps?: Array<{ name: string; flags: string[] }> } } };
    const bms = info['format-specific']?.data?.bitmaps ?? [];
    const bm = bms.find((b) => b.name === 'backup0');
    if (!bm) return ['bitmap backup0 is gone'];
    if (bm.flags.includes('in-use')) return ['bitmap backup0 is marked in use'];
    return [];
  };
  await check(t, { name: 'qcow2-bitmap', format: 'qcow2', pristine, request: { compact: true }, states: { seed: 19, prefixes: 6, randoms: 20 }, rerunEvery: 8, extra }, 60);
});
