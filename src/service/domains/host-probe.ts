/**
 * What the host says about an image file, without parsing it: QEMU's lock bytes (is a VM using
 * it?), how much of it SEEK_DATA reports as data, and whether its folder can punch holes.
 */
import { openSync, closeSync, writeSync, unlinkSync, fstatSync } from 'node:fs';
import { join } from 'node:path';
import * as sys from '../../io/syscalls.js';

/** QEMU holds a shared lock on byte 100 + 1 while it has the image open with write permission. */
const WRITE_PERM_BYTE = 101;

/**
 * True when another process holds QEMU's write-permission lock on the file: a running VM (or
 * qemu-io, qemu-nbd, an in-place sparsify). False when locks cannot be tested (old NFS): the
 * engine takes the real locks and fails then.
 */
export function heldForWriting(path: string): boolean {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch {
    return false;
  }
  try {
    return sys.ofdTestLock(fd, sys.F_WRLCK, WRITE_PERM_BYTE, 1);
  } catch {
    return false;
  } finally {
    closeSync(fd);
  }
}

/** Bytes of the file that hold data according to SEEK_DATA/SEEK_HOLE (unwritten fallocated space does not). */
export function hostDataBytes(path: string): number {
  const fd = openSync(path, 'r');
  try {
    const size = fstatSync(fd).size;
    let total = 0;
    let off = 0;
    // Each turn moves past one data run: bounded by the file's extents, and by a hard cap.
    for (let turns = 0; off < size && turns < 1_000_000; turns++) {
      let d: number;
      try {
        d = sys.seekData(fd, off);
      } catch {
        return size; // no SEEK_DATA here: all data
      }
      if (d < 0 || d >= size) break;
      const h = Math.min(sys.seekHole(fd, d), size);
      total += h - d;
      off = h;
    }
    return total;
  } finally {
    closeSync(fd);
  }
}

/** Can files in this folder have holes punched (the storage can discard)? Probed with a scratch file. */
export function canPunchHoles(dir: string): boolean {
  const probe = join(dir, `.sparsify-probe-${process.pid}-${Date.now()}`);
  let fd: number | undefined;
  try {
    fd = openSync(probe, 'w+');
    writeSync(fd, Buffer.alloc(65536, 1), 0, 65536, 0);
    sys.punchHole(fd, 0, 65536);
    return true;
  } catch {
    return false;
  } finally {
    if (fd !== undefined) closeSync(fd);
    try {
      unlinkSync(probe);
    } catch {
      // already gone
    }
  }
}
