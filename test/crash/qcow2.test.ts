/**
 * Power-cut states of in-place runs on qcow2 (harness.ts, scenario.ts): the discard alone, and
 * with compaction (data, L2 tables, compressed fragments); qcow2-chain.test.ts has the leaf of a
 * backing chain and an image with an enabled persistent dirty bitmap. qemu-img check may report leaks, never corruption;
 * every state keeps every file; a rerun leaves each state fully clean.
 */
import { test } from 'node:test';
import { join } from 'node:path';
import { run } from '../helpers/fixtures.js';
import { crashSuite, convertGuest } from './scenario.js';

const suite = crashSuite('sparsify-crash-qcow2-');
const { skip } = suite;


test('power cut: qcow2 discard, 512-byte clusters', { skip, timeout: 900_000 }, async (t) => {
  const pristine = convertGuest(suite.guest, 'qcow2', join(suite.dir, 'd512.qcow2'), ['cluster_size=512']);
  await suite.check(t, { name: 'qcow2-discard', format: 'qcow2', pristine, request: {}, states: { seed: 7, prefixes: 3, randoms: 5 }, rerunEvery: 20 }, 100);
});

test('power cut: qcow2 --compact, 4 KiB clusters', { skip, timeout: 900_000 }, async (t) => {
  const pristine = convertGuest(suite.guest, 'qcow2', join(suite.dir, 'c4k.qcow2'), ['cluster_size=4096']);
  await suite.check(t, { name: 'qcow2-compact', format: 'qcow2', pristine, request: { compact: true }, states: { seed: 11, prefixes: 6, randoms: 30 }, rerunEvery: 20 }, 100);
});

test('power cut: qcow2 --compact of compressed clusters', { skip, timeout: 900_000 }, async (t) => {
  const pristine = join(suite.dir, 'z.qcow2');
  run('qemu-img', ['convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=4096', suite.guest.raw, pristine]);
  await suite.check(t, { name: 'qcow2-compressed', format: 'qcow2', pristine, request: { compact: true }, states: { seed: 13, prefixes: 6, randoms: 30 }, rerunEvery: 20 }, 60);
});
