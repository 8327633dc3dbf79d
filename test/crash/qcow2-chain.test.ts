/**
 * Power-cut states of --compact runs on qcow2 (harness.ts, scenario.ts): the leaf of a backing
 * chain, and an image with an enabled persistent dirty bitmap (qcow2.test.ts has the others). qemu-img check may report leaks, never corruption;
 * every state keeps every file; a rerun leaves each state fully clean.
 */
import { test } from 'node:test';
import { join } from 'node:path';
import { run, garbageFile } from '../helpers/fixtures.js';
import { crashSuite, convertGuest } from './scenario.js';
import { statSync } from 'node:fs';

const suite = crashSuite('sparsify-crash-qcow2c-');
const { skip } = suite;


test('power cut: qcow2 --compact of a backing chain\'s leaf', { skip, timeout: 900_000 }, async (t) => {
  const base = join(suite.dir, 'base.raw');
  garbageFile(base, statSync(suite.guest.raw).size);
  const pristine = join(suite.dir, 'leaf.qcow2');
  run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'compat=1.1,cluster_size=4096', '-b', 'base.raw', '-F', 'raw', pristine]);
  run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'qcow2', suite.guest.raw, pristine]);
  await suite.check(t, { name: 'qcow2-leaf', format: 'qcow2', pristine, request: { compact: true }, states: { seed: 17, prefixes: 6, randoms: 30 }, rerunEvery: 20 }, 60);
});

test('power cut: qcow2 --compact with an enabled persistent dirty bitmap', { skip, timeout: 900_000 }, async (t) => {
  const pristine = convertGuest(suite.guest, 'qcow2', join(suite.dir, 'bm.qcow2'), ['cluster_size=4096']);
  run('qemu-img', ['bitmap', '--add', '-g', '65536', pristine, 'backup0']);
  const extra = (state: string): string[] => {
    const info = JSON.parse(run('qemu-img', ['info', '--output=json', state])) as { 'format-specific'?: { data?: { bitmaps?: Array<{ name: string; flags: string[] }> } } };
    const bms = info['format-specific']?.data?.bitmaps ?? [];
    const bm = bms.find((b) => b.name === 'backup0');
    if (!bm) return ['bitmap backup0 is gone'];
    if (bm.flags.includes('in-use')) return ['bitmap backup0 is marked in use'];
    return [];
  };
  await suite.check(t, { name: 'qcow2-bitmap', format: 'qcow2', pristine, request: { compact: true }, states: { seed: 19, prefixes: 6, randoms: 30 }, rerunEvery: 20, extra }, 60);
});
