/**
 * Power-cut states of in-place runs on raw and VDI images (harness.ts, scenario.ts). VDI changes
 * its block map and its allocated-block count in one fsync epoch, the only one in which qemu-img
 * check may complain; every state keeps every file, and a rerun leaves each one clean.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { copyFileSync } from 'node:fs';
import { tempDir, haveTool } from '../helpers/fixtures.js';
import { CRASH_TOOLS, makeGuestDisk, convertGuest, runScenario, type GuestDisk } from './scenario.js';

const missing = CRASH_TOOLS.filter((t) => !haveTool(t));
const skip = missing.length ? `missing tools: ${missing.join(', ')}` : false;

let work: { dir: string; cleanup: () => void };
let guest: GuestDisk;

before(() => {
  if (skip) return;
  work = tempDir('sparsify-crash-vdi-');
  guest = makeGuestDisk(work.dir);
});
after(() => work?.cleanup());

test('power cut: raw in place (hole punching)', { skip, timeout: 600_000 }, async (t) => {
  const pristine = join(work.dir, 'disk.raw');
  copyFileSync(guest.raw, pristine);
  const st = await runScenario({
    name: 'raw', format: 'raw', pristine, guest, request: {},
    states: { seed: 1701, prefixes: 3, randoms: 4 }, rerunEvery: 7,
  });
  t.diagnostic(JSON.stringify(st));
  assert.deepEqual(st.problems, []);
  assert.ok(st.states >= 5, `${st.states} states`);
});

test('power cut: vdi in place (map, count and slot moves)', { skip, timeout: 600_000 }, async (t) => {
  const pristine = convertGuest(guest, 'vdi', join(work.dir, 'disk.vdi'));
  const st = await runScenario({
    name: 'vdi', format: 'vdi', pristine, guest, request: {},
    states: { seed: 42, prefixes: 4, randoms: 12 }, rerunEvery: 5, corruptEpochs: 1,
  });
  t.diagnostic(JSON.stringify(st));
  assert.deepEqual(st.problems, []);
  assert.ok(st.states >= 20, `${st.states} states`);
});
