/**
 * Power-cut states of in-place runs on raw and VDI images (harness.ts, scenario.ts). VDI changes
 * its block map and its allocated-block count in one fsync epoch, the only one in which qemu-img
 * check may complain; every state keeps every file, and a rerun leaves each one clean.
 */
import { test } from 'node:test';
import { join } from 'node:path';
import { copyFileSync } from 'node:fs';
import { crashSuite, convertGuest } from './scenario.js';

// 32 MiB: VDI's 1 MiB blocks need room to be freed and moved.
const suite = crashSuite('sparsify-crash-vdi-', 32);
const { skip } = suite;

test('power cut: raw in place (hole punching)', { skip, timeout: 600_000 }, async (t) => {
  const pristine = join(suite.dir, 'disk.raw');
  copyFileSync(suite.guest.raw, pristine);
  await suite.check(t, { name: 'raw', format: 'raw', pristine, request: {}, states: { seed: 1701, prefixes: 4, randoms: 30 }, rerunEvery: 10 }, 20);
});

test('power cut: vdi in place (map, count and slot moves)', { skip, timeout: 600_000 }, async (t) => {
  const pristine = convertGuest(suite.guest, 'vdi', join(suite.dir, 'disk.vdi'));
  const st = await suite.check(t, { name: 'vdi', format: 'vdi', pristine, request: {}, states: { seed: 42, prefixes: 6, randoms: 20 }, rerunEvery: 10, corruptEpochs: 1 }, 20);
  t.diagnostic(`vdi: qemu-img check complained in ${st.corrupt} states, all in fsync epoch ${st.corruptEpochs.join(', ')}; each was rerun clean`);
});
