/**
 * In-place discard and compaction for VHD images (qemu: vpc): the entry the executor calls.
 * Fixed disks are raw data followed by their footer (vhd/fixed-discard.ts); dynamic and
 * differencing disks map blocks through the BAT (vhd/layout.ts, vhd/dynamic-discard.ts).
 */
import { SparsifyError } from '../io/errors.js';
import type { DiskImage } from './types.js';
import type { DiscardBackend } from './discard-types.js';
import { BlockMappedImage } from './common/blockimage.js';
import { FixedVhdDiscarder } from './vhd/fixed-discard.js';
import { VhdLayout } from './vhd/layout.js';
import { DynamicVhdDiscarder } from './vhd/dynamic-discard.js';

export async function openVhdDiscarder(image: DiskImage): Promise<DiscardBackend> {
  if (!(image instanceof BlockMappedImage) || image.format !== 'vpc') throw new Error(`${image.path}: not a vpc image`);
  const file = image.file;
  if (!file.writable) throw new Error(`${file.path}: vpc in-place discard needs the image opened for writing`);
  if (image.layers()[0]?.details?.['subformat'] === 'fixed') return FixedVhdDiscarder.open(file);
  if (file.isBlockDevice) {
    // qemu appends blocks past the last one without zeroing them: only a file's end reads as zero.
    throw new SparsifyError(
      `${file.path}: --in-place is not supported for a dynamic VHD on a block device (qemu would append new blocks over stale data); use copy mode: sparsify ${file.path} OUTPUT`,
    );
  }
  return DynamicVhdDiscarder.open(await VhdLayout.load(file), image.virtualSize);
}
