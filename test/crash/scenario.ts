/**
 * Runs one power-cut scenario: an in-place sparsify of an image is recorded, every crash state of
 * it (harness.ts) is rebuilt and checked with the real tools: `qemu-img check` (leaks allowed,
 * corruption only where the scenario allows it, for at most the given number of fsync epochs) and
 * the guest's own oracle: the image converted to raw by qemu-img, e2fsck -fn on its ext4
 * filesystem, and the checksum of every file. Some states are then sparsified again, which must
 * leave them fully clean. The guest disk is a whole-disk ext4 (no partition table) so each check
 * costs a conversion, one fsck and one debugfs dump.
 */
import { join, dirname, basename } from 'node:path';
import { copyFileSync, rmSync, mkdirSync, openSync, readSync, closeSync, accessSync, constants, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createHash } from 'node:crypto';
import { before, after } from 'node:test';
import assert from 'node:assert/strict';
import { run, runStatus, fileContent, garbageFile, haveTool } from '../helpers/fixtures.js';
import { makeExtImage, e2fsck, extFileSums } from '../helpers/ext-fixtures.js';
import { sparsifyInPlace, type InPlaceRequest } from '../../src/operations/in-place.js';
import { recordIo, epochsOf, crashStates, StateBuilder, opCounts, type StateOptions } from './harness.js';

export const CRASH_TOOLS = ['qemu-img', 'mke2fs', 'e2fsck', 'debugfs'];

/**
 * A temporary folder for power-cut scenarios, on tmpfs (/dev/shm) where there is one: every state
 * is a copy of the image and a conversion of it, hundreds of times over, and on tmpfs those are
 * memory copies, not disk writes waiting for write-back. tmpfs punches holes and seeks data and
 * holes like a disk filesystem.
 */
export function crashTempDir(prefix: string): { dir: string; cleanup: () => void } {
  let base = tmpdir();
  try {
    accessSync('/dev/shm', constants.W_OK);
    base = '/dev/shm';
  } catch {
    // no tmpfs: the ordinary temporary folder
  }
  const dir = mkdtempSync(join(base, prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export interface GuestDisk {
  /** The raw disk: a whole-disk ext4 on garbage, with deleted files' data in its free blocks. */
  raw: string;
  /** sha256 of every file, as debugfs reads them. */
  sums: Map<string, string>;
}

/**
 * A whole-disk ext4 of `sizeMiB` on garbage, files kept and deleted in turn so the kept data lies
 * on both sides of the freed space (compaction has data to move down).
 */
export function makeGuestDisk(dir: string, sizeMiB = 24, name = 'guest.raw'): GuestDisk {
  const raw = join(dir, name);
  const files: Record<string, Buffer> = {};
  const remove: string[] = [];
  const unit = Math.floor((sizeMiB << 20) / 32 / 4096) * 4096;
  for (let i = 0; i < 6; i++) {
    files[`k${i}/keep.bin`] = fileContent(`keep${i}`, ((i % 3) + 1) * unit + 4096 * i + 17);
    files[`g${i}/gone.bin`] = fileContent(`gone${i}`, (((i + 1) % 3) + 1) * unit);
    remove.push(`g${i}/gone.bin`);
  }
  files['notes.txt'] = Buffer.from('kept small file\n');
  makeExtImage(raw, { type: 'ext4', sizeMiB, files, remove }, dir);
  return { raw, sums: extFileSums(raw, dir) };
}

/** sha1 of a file, read 4 MiB at a time. */
function fileDigest(path: string): string {
  const h = createHash('sha1');
  const buf = Buffer.allocUnsafe(4 << 20);
  const fd = openSync(path, 'r');
  try {
    for (let n; (n = readSync(fd, buf, 0, buf.length, null)) > 0; ) h.update(buf.subarray(0, n));
  } finally {
    closeSync(fd);
  }
  return h.digest('hex');
}

/**
 * Problems of a guest disk image (any format qemu-img reads): fsck and every file's checksum. The
 * verdict is kept by the guest content's digest (`seen`): the same bytes get the same verdict, so
 * states that differ only in the image's own metadata cost one conversion and a digest.
 */
export function guestProblems(image: string, format: string, guest: GuestDisk, scratch: string, seen?: Map<string, string[]>): string[] {
  const raw = join(scratch, `guest-${basename(image)}.raw`);
  try {
    const c = runStatus('qemu-img', ['convert', '-f', format, '-O', 'raw', image, raw]);
    if (c.status !== 0) return [`qemu-img convert failed: ${c.stderr.trim()}`];
    const digest = fileDigest(raw);
    const known = seen?.get(digest);
    if (known) return known;
    const problems: string[] = [];
    const f = e2fsck(raw);
    if (f.status !== 0) problems.push(`e2fsck ${f.status}: ${f.output.slice(0, 300)}`);
    const sums = extFileSums(raw, scratch);
    for (const [k, v] of guest.sums) if (sums.get(k) !== v) problems.push(`${k} lost or changed`);
    seen?.set(digest, problems);
    return problems;
  } finally {
    rmSync(raw, { force: true });
  }
}

/** qemu-img check: 0 clean, 2 corruption, 3 leaks only; undefined for formats it cannot check. */
export function qemuCheck(image: string, format: string): { status: number; output: string } | undefined {
  const r = runStatus('qemu-img', ['check', '-f', format, image]);
  if (/does not support checks/.test(r.stderr)) return undefined;
  return { status: r.status, output: (r.stdout + r.stderr).trim() };
}

export interface Scenario {
  name: string;
  /** qemu-img's name of the image format. */
  format: string;
  /** The image to sparsify, as it is before the run (never changed). Its folder holds any backing file. */
  pristine: string;
  guest: GuestDisk;
  /** The in-place request, less the path. */
  request: Omit<InPlaceRequest, 'path'>;
  states: StateOptions;
  /** Epochs in which qemu-img check may report corruption (VDI's map and count: 1). Default 0. */
  corruptEpochs?: number;
  /** Rerun sparsify on every n-th state (and on every state qemu-img check finds corrupt). */
  rerunEvery: number;
  /** Extra check of each state (bitmaps, ...); returns problems. */
  extra?: (state: string) => string[];
  /**
   * The image the oracle (qemu-img check, the guest checks) reads for a state, when it is not the
   * state itself: VHDX states with a log to replay are copied and replayed first, as qemu and
   * Hyper-V replay on open. The rerun still runs on the state as the crash left it.
   */
  readable?: (state: string, scratch: string) => string;
}

export interface ScenarioStats {
  ops: Record<string, number>;
  epochs: number;
  states: number;
  leaks: number;
  corrupt: number;
  corruptEpochs: number[];
  reruns: number;
  /** States whose guest content had not been seen before (each got fsck and checksums). */
  distinctGuests: number;
  problems: string[];
}

function quiet(): Pick<InPlaceRequest, 'onStatus' | 'onWarning' | 'onInfo'> {
  return { onStatus: () => undefined, onWarning: () => undefined, onInfo: () => undefined };
}

/** Record the run, then check every crash state. Problems are collected, not thrown. */
export async function runScenario(s: Scenario): Promise<ScenarioStats> {
  const dir = dirname(s.pristine);
  const scratch = join(dir, `scratch-${s.name.replace(/\W+/g, '-')}`);
  mkdirSync(scratch, { recursive: true });
  const ext = s.pristine.replace(/^.*\./, '');
  const work = join(dir, `run-${basename(s.pristine)}`);
  const state = join(dir, `state-${basename(s.pristine, `.${ext}`)}.${ext}`);
  const durable = join(scratch, 'durable');
  const stats: ScenarioStats = { ops: {}, epochs: 0, states: 0, leaks: 0, corrupt: 0, corruptEpochs: [], reruns: 0, distinctGuests: 0, problems: [] };
  const seen = new Map<string, string[]>();
  try {
    copyFileSync(s.pristine, work);
    const { ops } = await recordIo(work, () => sparsifyInPlace({ path: work, format: s.format, ...s.request, ...quiet() }));
    stats.ops = opCounts(ops);
    const final = qemuCheck(work, s.format);
    if (final && final.status !== 0) stats.problems.push(`the uninterrupted run left qemu-img check ${final.status}: ${final.output}`);
    const epochs = epochsOf(ops);
    stats.epochs = epochs.length;
    const builder = new StateBuilder(epochs, s.pristine, durable);
    const badEpochs = new Set<number>();
    for (const [i, cs] of crashStates(epochs, s.states).entries()) {
      builder.build(cs, state);
      stats.states++;
      const where = `${s.name}, ${cs.label}`;
      const seenBy = s.readable ? s.readable(state, scratch) : state;
      const c = qemuCheck(seenBy, s.format);
      if (c?.status === 3) stats.leaks++;
      else if (c?.status === 2) {
        stats.corrupt++;
        badEpochs.add(cs.epoch);
      } else if (c && c.status !== 0) stats.problems.push(`${where}: qemu-img check ${c.status}: ${c.output}`);
      for (const p of guestProblems(seenBy, s.format, s.guest, scratch, seen)) stats.problems.push(`${where}: ${p}`);
      for (const p of s.extra?.(seenBy) ?? []) stats.problems.push(`${where}: ${p}`);
      if (seenBy !== state) rmSync(seenBy, { force: true });
      if (c?.status === 2 || i % s.rerunEvery === 0) {
        stats.reruns++;
        try {
          await sparsifyInPlace({ path: state, format: s.format, ...s.request, ...quiet() });
          const again = qemuCheck(state, s.format);
          if (again && again.status !== 0) stats.problems.push(`${where}: after a rerun, qemu-img check ${again.status}: ${again.output}`);
          for (const p of guestProblems(state, s.format, s.guest, scratch, seen)) stats.problems.push(`${where}: after a rerun: ${p}`);
          for (const p of s.extra?.(state) ?? []) stats.problems.push(`${where}: after a rerun: ${p}`);
        } catch (e) {
          stats.problems.push(`${where}: the rerun failed: ${(e as Error).message}`);
        }
      }
      if (stats.problems.length > 20) break;
    }
    stats.distinctGuests = seen.size;
    stats.corruptEpochs = [...badEpochs].sort((a, b) => a - b);
    if (badEpochs.size > (s.corruptEpochs ?? 0)) {
      stats.problems.push(`qemu-img check reported corruption in ${badEpochs.size} fsync epochs (${stats.corruptEpochs.join(', ')}); allowed: ${s.corruptEpochs ?? 0}`);
    }
    return stats;
  } finally {
    rmSync(scratch, { recursive: true, force: true });
    rmSync(work, { force: true });
    rmSync(state, { force: true });
  }
}

/** A pristine image of `format` made from the guest's raw disk by qemu-img convert (-o options). */
export function convertGuest(guest: GuestDisk, format: string, out: string, options: string[] = []): string {
  run('qemu-img', ['convert', '-f', 'raw', '-O', format, ...(options.length ? ['-o', options.join(',')] : []), guest.raw, out]);
  return out;
}

/** A garbage-filled raw file, for backing files. */
export { garbageFile };

/** A test file's shared setting: the tools to skip without, a folder on tmpfs, and the guest disk. */
export interface CrashSuite {
  skip: string | false;
  readonly dir: string;
  readonly guest: GuestDisk;
  /** Run a scenario on this suite's guest; fails on any problem or with fewer than `minStates` states. */
  check(t: { diagnostic(m: string): void }, s: Omit<Scenario, 'guest'>, minStates: number): Promise<ScenarioStats>;
}

/** Register the file's before/after hooks (a folder, a guest disk of `sizeMiB`) and return its suite. */
export function crashSuite(prefix: string, sizeMiB = 16): CrashSuite {
  const missing = CRASH_TOOLS.filter((t) => !haveTool(t));
  const skip = missing.length ? `missing tools: ${missing.join(', ')}` : false;
  let work: { dir: string; cleanup: () => void } | undefined;
  let guest: GuestDisk | undefined;
  before(() => {
    if (skip) return;
    work = crashTempDir(prefix);
    guest = makeGuestDisk(work.dir, sizeMiB);
  });
  after(() => work?.cleanup());
  return {
    skip,
    get dir() {
      return work!.dir;
    },
    get guest() {
      return guest!;
    },
    async check(t, s, minStates) {
      const st = await runScenario({ ...s, guest: guest! });
      t.diagnostic(
        `${s.name}: ${st.states} states over ${st.epochs} epochs (${st.distinctGuests} distinct guest contents), ` +
          `${st.leaks} with leaks, ${st.corrupt} corrupt (epochs ${st.corruptEpochs.join(', ') || 'none'}), ${st.reruns} reruns; ops ${JSON.stringify(st.ops)}`,
      );
      assert.deepEqual(st.problems, []);
      assert.ok(st.states >= minStates, `only ${st.states} states`);
      return st;
    },
  };
}
