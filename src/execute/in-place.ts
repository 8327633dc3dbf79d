/**
 * In-place executor: pick the discard backend for the opened image (raw file, block device, qcow2,
 * vdi), align the plan's discard ranges to what it can really discard, check that discarding works
 * before changing anything, then discard with progress, stopping cleanly on the abort signal.
 */
import { stat } from 'node:fs/promises';
import { SparsifyError } from '../io/errors.js';
import type { Extents } from '../io/extents.js';
import type { DiskImage } from '../formats/types.js';
import { RawImage } from '../formats/raw.js';
import { BlockDeviceDiscarder, RawFileDiscarder } from '../formats/raw-discard.js';
import { Qcow2Discarder } from '../formats/qcow2/discard.js';
import { Qcow2Image } from '../formats/qcow2/image.js';
import { BlockMappedImage } from '../formats/common/blockimage.js';
import { VdiDiscarder } from '../formats/vdi-discard.js';
import type { ProgressListener } from './progress.js';
import type { DiscardBackend } from '../formats/discard-types.js';

export interface InPlaceOptions {
  onProgress?: ProgressListener;
  onWarning?: (msg: string) => void;
  onTrace?: (msg: string) => void;
  signal?: AbortSignal;
  /** Ranges of --zero devices: they must read as zero afterwards, edges included. */
  zero?: Extents;
}

export interface InPlaceResult {
  /** Virtual bytes the aligned plan covers (the progress total). */
  planned: number;
  discarded: number;
  kept: number;
  aborted: boolean;
}

function hasBackingLayer(image: DiskImage): boolean {
  return image.layers().length > 1;
}

export async function discardBackendFor(image: DiskImage): Promise<DiscardBackend> {
  switch (image.format) {
    case 'raw': {
      if (!(image instanceof RawImage)) throw new Error('raw image is not a RawImage');
      const file = image.file;
      if (file.isBlockDevice) return BlockDeviceDiscarder.open(file, (await stat(file.path)).rdev);
      return RawFileDiscarder.open(file);
    }
    case 'qcow2':
      if (!(image instanceof Qcow2Image)) throw new Error('qcow2 image is not a Qcow2Image');
      return Qcow2Discarder.open(image.file, image.header, hasBackingLayer(image));
    case 'vdi':
      if (!(image instanceof BlockMappedImage)) throw new Error('vdi image is not block-mapped');
      return VdiDiscarder.open(image.file);
    default:
      throw new SparsifyError(
        `${image.path}: --in-place is not supported for ${image.format} images (only raw, qcow2 and vdi); use copy mode: sparsify ${image.path} OUTPUT`,
      );
  }
}

export async function discardInPlace(backend: DiscardBackend, discard: Extents, opts: InPlaceOptions = {}): Promise<InPlaceResult> {
  const ranges = backend.align(discard);
  const planned = ranges.total();
  opts.onTrace?.(`in-place: ${backend.description}; ${ranges.count} ranges, ${planned} bytes`);
  await backend.probe();
  opts.onProgress?.({ done: 0, total: planned });
  const r = await backend.discard(ranges, {
    onProgress: (done) => opts.onProgress?.({ done: Math.min(done, planned), total: planned }),
    signal: opts.signal,
    warn: (m) => opts.onWarning?.(m),
    zero: opts.zero,
  });
  if (!r.aborted) {
    const edges = opts.zero ? opts.zero.subtract(ranges) : undefined;
    if (edges && !edges.isEmpty) {
      if (backend.writeZeros) await backend.writeZeros(edges);
      else opts.onWarning?.(`${edges.total()} bytes at the unaligned edges of --zero devices were left as they were`);
    }
    opts.onProgress?.({ done: planned, total: planned });
  }
  return { planned, discarded: r.discarded, kept: r.kept, aborted: r.aborted };
}
