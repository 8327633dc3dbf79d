/**
 * Power-cut states of in-place runs on VHDX images (harness.ts, scenario.ts): the BAT changes only
 * through the VHDX log, so every state must be one qemu accepts once it has replayed the log, as
 * qemu and Hyper-V replay on open: the oracle reads a copy of each state after `qemu-img check -r
 * all` (qemu's replay), while the rerun of sparsify starts from the state as the crash left it
 * (our own replay). No epoch may show corruption, every file must survive, and every rerun must
 * leave an image qemu-img check accepts read-only (log retired).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { copyFileSync, rmSync } from 'node:fs';
import { runStatus, readBytes } from '../helpers/fixtures.js';
import { crashSuite, convertGuest, runScenario } from './scenario.js';
import { sparsifyInPlace } from '../../src/operations/in-place.js';
import { BlockFile } from '../../src/io/file.js';
import { readHeaderPair, readRegions } from '../../src/formats/vhdx/structures.js';
import { VhdxLogWriter } from '../../src/formats/vhdx/log-writer.js';

const suite = crashSuite('sparsify-crash-vhdx-', 32);
const { skip } = suite;

/**
 * A copy of the state with its log replayed by qemu (the state itself stays as the crash left it).
 * Both headers with a zero log GUID need no replay: the state itself is read (were a log pending
 * after all, qemu-img check read-only would then refuse it, and the scenario would say so).
 */
function replayedByQemu(state: string, scratch: string): string {
  const zero = Buffer.alloc(16);
  if ([0x10000, 0x20000].every((at) => readBytes(state, at + 48, 16).equals(zero))) return state;
  const copy = join(scratch, 'replayed.vhdx');
  copyFileSync(state, copy);
  // When qemu cannot replay it, the read-only check that follows says why.
  runStatus('qemu-img', ['check', '-r', 'all', '-f', 'vhdx', copy]);
  return copy;
}

/**
 * A pristine image a power cut left with a log to replay: an earlier run's BAT sector with half of
 * its changes (every other zeroed block) logged and made durable, not applied.
 */
async function withPendingHalfDiscard(name: string): Promise<string> {
  const pristine = convertGuest(suite.guest, 'vhdx', join(suite.dir, name), ['block_size=1M']);
  const done = join(suite.dir, `done-${name}`);
  copyFileSync(pristine, done);
  await sparsifyInPlace({ path: done, onStatus: () => undefined, onInfo: () => undefined });
  const f = await BlockFile.open(pristine, 'r+');
  try {
    const batAt = (await readRegions(f)).bat.offset;
    const was = readBytes(pristine, batAt, 4096);
    const now = readBytes(done, batAt, 4096);
    const half = Buffer.from(was);
    let changed = 0;
    for (let e = 0; e < 512; e++) {
      if (was.readBigUInt64LE(e * 8) !== now.readBigUInt64LE(e * 8) && changed++ % 2 === 0) half.writeBigUInt64LE(now.readBigUInt64LE(e * 8), e * 8);
    }
    assert.ok(changed >= 4, `the earlier run changed ${changed} entries`);
    const log = new VhdxLogWriter(f, (await readHeaderPair(f)).current);
    await log.begin({ dataChanges: true });
    await log.logEntry([{ kind: 'data', fileOffset: batAt, data: half }]);
  } finally {
    await f.close();
    rmSync(done, { force: true });
  }
  assert.match(runStatus('qemu-img', ['check', '-f', 'vhdx', pristine]).stderr, /log that needs to be replayed/);
  return pristine;
}

test('power cut: vhdx in place from a pending log (replay, then discard through the log, then release)', { skip, timeout: 600_000 }, async (t) => {
  const pristine = await withPendingHalfDiscard('discard.vhdx');
  const st = await runScenario({
    name: 'vhdx-discard', format: 'vhdx', pristine, guest: suite.guest, request: {},
    states: { seed: 4242, prefixes: 8, randoms: 60 }, rerunEvery: 20, readable: replayedByQemu,
  });
  t.diagnostic(JSON.stringify(st));
  assert.deepEqual(st.problems, []);
  assert.equal(st.corrupt, 0);
  assert.ok(st.states >= 100, `${st.states} states`);
});

test('power cut: vhdx in place with --compact (moves, repointing through the log, truncation)', { skip, timeout: 600_000 }, async (t) => {
  const pristine = convertGuest(suite.guest, 'vhdx', join(suite.dir, 'compact.vhdx'), ['block_size=1M']);
  const st = await runScenario({
    name: 'vhdx-compact', format: 'vhdx', pristine, guest: suite.guest, request: { compact: true },
    states: { seed: 777, prefixes: 6, randoms: 30 }, rerunEvery: 20, readable: replayedByQemu,
  });
  t.diagnostic(JSON.stringify(st));
  assert.deepEqual(st.problems, []);
  assert.equal(st.corrupt, 0);
  assert.ok(st.states >= 120, `${st.states} states`);
});
