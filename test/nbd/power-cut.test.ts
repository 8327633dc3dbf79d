/**
 * Power cuts during an in-place run over NBD: a qcow2 file served as bytes (qemu-nbd -f raw
 * --discard=unmap) is sparsified through the export while every change the NBD handle issues is
 * recorded (io/observer.ts, keyed by the address), with FLUSH as the epoch boundary. Replaying the
 * whole log onto the pristine image gives what the server wrote (so nothing went unrecorded), and
 * every crash state (test/crash/harness.ts) passes qemu-img check (leaks allowed) with a clean
 * e2fsck and every file intact.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { copyFileSync } from 'node:fs';
import { run, releaseAll } from '../helpers/fixtures.js';
import { sparsifyInPlace } from '../../src/operations/in-place.js';
import { recordIo, epochsOf, crashStates, StateBuilder } from '../crash/harness.js';
import { crashTempDir, makeGuestDisk, guestProblems, qemuCheck, convertGuest, type GuestDisk } from '../crash/scenario.js';
import { qemuNbd, ServerPool } from './servers.js';

let work: { dir: string; cleanup: () => void } | undefined;
let guest: GuestDisk | undefined;
const servers = new ServerPool();

before(() => {
  work = crashTempDir('sparsify-nbd-crash-');
  guest = makeGuestDisk(work.dir, 16);
});
after(() => releaseAll(...servers.stops, () => work?.cleanup()));

test('power cut: qcow2 in place through an NBD export', { timeout: 300_000 }, async () => {
  const dir = work!.dir;
  const pristine = convertGuest(guest!, 'qcow2', join(dir, 'p.qcow2'), ['cluster_size=4096']);
  const served = join(dir, 'served.qcow2');
  copyFileSync(pristine, served);
  const s = await qemuNbd(dir, served, { format: 'raw', writable: true, extra: ['--discard=unmap'] });
  servers.add(s);
  const quiet = { onStatus: () => undefined, onWarning: () => undefined, onInfo: () => undefined };
  const { ops } = await recordIo(s.uri, () => sparsifyInPlace({ path: s.uri, ...quiet }));
  await s.stop();
  const epochs = epochsOf(ops);
  assert.ok(epochs.length >= 3, `${epochs.length} epochs`);
  assert.ok(ops.some((o) => o.kind === 'punch'), 'space released through the export');

  // The whole log replayed gives the image the server wrote.
  const replay = join(dir, 'replay.qcow2');
  new StateBuilder(epochs, pristine, join(dir, 'durable-all')).build({ epoch: epochs.length, pieces: [], label: 'all' }, replay);
  assert.match(run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', replay, served]), /identical/);

  const state = join(dir, 'state.qcow2');
  const builder = new StateBuilder(epochs, pristine, join(dir, 'durable'));
  const seen = new Map<string, string[]>();
  const problems: string[] = [];
  let n = 0;
  for (const cs of crashStates(epochs, { seed: 19, prefixes: 3, randoms: 4 })) {
    builder.build(cs, state);
    n++;
    const c = qemuCheck(state, 'qcow2');
    if (c && c.status !== 0 && c.status !== 3) problems.push(`${cs.label}: qemu-img check ${c.status}: ${c.output.slice(0, 200)}`);
    for (const p of guestProblems(state, 'qcow2', guest!, dir, seen)) problems.push(`${cs.label}: ${p}`);
    if (problems.length > 10) break;
  }
  assert.deepEqual(problems, []);
  assert.ok(n >= 10, `only ${n} states`);
});
