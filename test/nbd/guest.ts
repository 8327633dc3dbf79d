/**
 * The guest the NBD copy and in-place tests share: a 96 MiB GPT disk on garbage, with a 60 MiB
 * ext4 partition holding 12 kept files and the data of 8 deleted ones, and a 30 MiB partition of
 * garbage. Its oracle: e2fsck of the partition and the checksum of every file.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { fileContent } from '../helpers/fixtures.js';
import { buildDisk } from '../helpers/disk-builder.js';
import { extract, e2fsck, extFileSums } from '../helpers/ext-fixtures.js';

/** Where the ext4 partition lies on the disk. */
export const GUEST_PART = { offset: 1 << 20, size: 60 << 20 };

/** Build the guest disk at `disk` (raw), working in `dir`. */
export function buildGuest(disk: string, dir: string): void {
  const files: Record<string, Buffer> = {};
  for (let i = 0; i < 12; i++) files[`d/f${i}`] = fileContent(`f${i}`, 300_000 + i * 4099);
  const gone: Record<string, Buffer> = {};
  for (let i = 0; i < 8; i++) gone[`x/g${i}`] = fileContent(`g${i}`, 2_000_000);
  buildDisk(disk, { sizeMiB: 96, label: 'gpt', garbage: true, workDir: dir, parts: [{ sizeMiB: 60, ext: { type: 'ext4', files: { ...files, ...gone }, remove: Object.keys(gone) } }, { sizeMiB: 30 }] });
}

/** The checksum of every file of the guest's ext4 partition in the raw image `raw`. */
export function guestSums(raw: string, dir: string): Map<string, string> {
  const p = join(dir, 'guest-part.img');
  extract(raw, GUEST_PART.offset, GUEST_PART.size, p);
  return extFileSums(p, dir);
}

/** The raw image's ext4 partition checks clean and holds every file as `want` says. */
export function checkGuestFiles(raw: string, dir: string, want: Map<string, string>): void {
  const p = join(dir, 'check-part.img');
  extract(raw, GUEST_PART.offset, GUEST_PART.size, p);
  assert.equal(e2fsck(p).status, 0, 'e2fsck clean');
  assert.deepEqual(extFileSums(p, dir), want);
}
