/**
 * What a domain entry is now (lstat, and the device behind a symlink), with the key of its version.
 * Synchronous: an lstat takes microseconds, and a round trip through libuv's thread pool per file
 * made a rescan of 100,000 unchanged files wait some 10 s; the scanner yields every few hundred files.
 */
import { lstatSync, type Stats } from 'node:fs';
import type { DeviceFacts } from '../store/records.js';
import { statKey } from './stat-key.js';
import { deviceBehind, deviceKey } from './device-probe.js';

/** What a domain entry is now: a regular file, or a symlink to a block device, with the key of its version. */
export interface Entry {
  st: Stats;
  device: DeviceFacts | null;
  key: string;
}

export function entryAt(full: string): Entry | undefined {
  let st: Stats;
  try {
    st = lstatSync(full);
  } catch {
    return undefined;
  }
  if (st.isFile()) return { st, device: null, key: statKey(st) };
  if (!st.isSymbolicLink()) return undefined;
  const device = deviceBehind(full);
  return device ? { st, device, key: deviceKey(st, device) } : undefined;
}

