/**
 * Copy mode over the disk's own file: a sparse copy beside it, renamed over it. A read lock that
 * refuses writers is held on the original all along, so no VM starts writing to data we are about
 * to replace. The copy is named after the job and the attempt, so a host that takes the job over
 * can remove what an earlier attempt left, and never anything of a later one. The rename happens
 * only after the fence check (`beforeRename`). The leaf of a backing chain is copied keeping its
 * backing file: only its own clusters, minus the wholly free ones.
 */
import { statSync, statfsSync, fstatSync, openSync, closeSync, readdirSync, unlinkSync, chmodSync, chownSync, renameSync, fsyncSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { acquireImageLock, READ_LOCK, humanBytes, type OperationEvents } from '../../index.js';
import type { EnginePool } from '../engine/pool.js';
import type { DiskRecord, JobRecord } from '../store/records.js';

const tempPrefix = (diskPath: string, jobId: string): string => `.${basename(diskPath)}.sparsify-job-${jobId}-a`;

/** Remove the temporary files of this job's attempts before `below` (all of them when absent), and of `only` when given. */
export function removeTemps(diskPath: string, jobId: string, which: { below?: number; only?: number }): void {
  const dir = dirname(diskPath);
  const prefix = tempPrefix(diskPath, jobId);
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return;
  }
  for (const n of names) {
    // The engine writes `.NAME...` beside its output, so our temp's own temp starts with one more dot.
    const at = n.startsWith(prefix) ? prefix.length : n.startsWith(`.${prefix}`) ? prefix.length + 1 : -1;
    if (at < 0) continue;
    const attempt = parseInt(n.slice(at), 10);
    const mine = which.only !== undefined ? attempt === which.only : which.below === undefined || attempt < which.below;
    if (!mine) continue;
    try {
      unlinkSync(join(dir, n));
    } catch {
      // gone already
    }
  }
}

/**
 * The space the copy will take: what the disk holds now less what it gives back, and a margin for
 * the format's own tables. From the stored analysis; without one, the disk's actual size.
 */
export function copyNeeds(d: DiskRecord): number {
  // The leaf of a chain is copied keeping its backing file: only its own data goes into the copy.
  const a = d.analysis;
  const data = a ? (d.chain.length > 1 ? a.ownDataBytes : a.dataBytes) : undefined;
  const keep = a && data !== undefined ? Math.max(0, data - a.reclaimableBytes) : d.actualSize;
  return Math.ceil(keep * 1.01) + (1 << 20);
}

/** Free bytes for an unprivileged writer in the folder's filesystem. */
function available(dir: string): number {
  const st = statfsSync(dir);
  return st.bavail * st.bsize;
}

export async function copyAndReplace(engine: EnginePool, job: JobRecord, d: DiskRecord, path: string, events: OperationEvents, beforeRename: () => Promise<void>): Promise<void> {
  // What a dead host's attempt left beside the disk goes first.
  removeTemps(path, job.id, { below: job.attempts });
  const guard = openSync(path, 'r');
  try {
    acquireImageLock(guard, path, READ_LOCK);
    const orig = fstatSync(guard);
    if (orig.ino !== d.ino) throw new Error(`${d.name} changed since it was validated (another file is at its path)`);
    const temp = join(dirname(path), `${tempPrefix(path, job.id)}${job.attempts}.tmp`);
    const needs = copyNeeds(d);
    const free = available(dirname(path));
    const noSpace = () => new Error(`not enough free space beside ${d.name} for its sparse copy: it needs about ${humanBytes(needs)} (${needs} bytes), ${humanBytes(free)} (${free} bytes) were free; free some space or use mode in-place`);
    if (free < needs) throw noSpace();
    try {
      // The leaf of a chain is copied as a new overlay on the same backing file, beside it, so the backing name means the same file.
      const keepBacking = d.chain.length > 1;
      try {
        await engine.copy({ input: path, output: temp, format: d.format!, convert: d.format!, ignore: job.options.ignore, zero: job.options.zero, keepBacking }, events);
      } catch (e) {
        if (/ENOSPC|no space left/i.test((e as Error).message)) throw noSpace();
        throw e;
      }
      if (events.signal?.aborted) throw new Error('stopped');
      chmodSync(temp, orig.mode & 0o7777);
      try {
        chownSync(temp, orig.uid, orig.gid);
      } catch {
        // not root: the copy keeps our ownership
      }
      // The path must still lead to the file we copied: someone may have replaced or deleted it meanwhile.
      let now: number | undefined;
      try {
        now = statSync(path).ino;
      } catch {
        now = undefined;
      }
      if (now !== orig.ino) throw new Error(`${d.name} was ${now === undefined ? 'deleted' : 'replaced'} by another process during the job; the copy was not renamed over it`);
      await beforeRename();
      renameSync(temp, path);
      const dfd = openSync(dirname(path), 'r');
      try {
        fsyncSync(dfd);
      } catch {
        // some filesystems cannot sync a folder; the rename is atomic anyway
      } finally {
        closeSync(dfd);
      }
    } finally {
      removeTemps(path, job.id, { only: job.attempts });
    }
  } finally {
    closeSync(guard);
  }
}
