/**
 * In-place executor: pick the discard backend for the opened image (raw file, block device, an
 * image format), align the plan's discard ranges to what it can really discard, check how freed
 * space can go back to the host before changing anything, discard with progress, then compact
 * where asked (or where the format needs it), stopping cleanly on the abort signal.
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
import { openVmdkDiscarder } from '../formats/vmdk/discard.js';
import { openVhdDiscarder } from '../formats/vhd-discard.js';
import { openVhdxDiscarder } from '../formats/vhdx/discard.js';
import type { ProgressListener } from './progress.js';
import { NbdFile } from '../io/nbd/nbd-file.js';
import { NbdDiscarder } from './nbd-discard.js';
import { discardUnsupported, type CompactResult, type DiscardBackend } from '../formats/discard-types.js';

/** Compact after discarding: always, never, or 'auto': only where the storage cannot release space. */
export type CompactMode = boolean | 'auto';

export interface InPlaceOptions {
  onProgress?: ProgressListener;
  onWarning?: (msg: string) => void;
  onTrace?: (msg: string) => void;
  signal?: AbortSignal;
  /** Ranges of --zero devices: they must read as zero afterwards, edges included. */
  zero?: Extents;
  /** Default false: as virt-sparsify, only release (punch, discard) what the guest does not use. */
  compact?: CompactMode;
  /** The image's path, for messages. */
  path?: string;
  /**
   * When compacting: the blocks of `granularity` outside the plan that read as zero (they are
   * discarded too, as `qemu-img convert` would leave them out).
   */
  findZeros?: (granularity: number) => Promise<Extents>;
}

export interface InPlaceResult {
  /** Virtual bytes the aligned plan covers (the progress total). */
  planned: number;
  discarded: number;
  kept: number;
  aborted: boolean;
  /** Freed space was released to the host (holes, BLKDISCARD). */
  released: boolean;
  /** The compaction that ran. */
  compaction?: CompactResult;
  /** Where compaction would end the image, when the format can compact and it did not run. */
  compactableEnd?: number;
}

function hasBackingLayer(image: DiskImage): boolean {
  return image.layers().length > 1;
}

export async function discardBackendFor(image: DiskImage): Promise<DiscardBackend> {
  switch (image.format) {
    case 'raw': {
      if (!(image instanceof RawImage)) throw new Error('raw image is not a RawImage');
      const file = image.file;
      if (file instanceof NbdFile) return new NbdDiscarder(file);
      if (file.isBlockDevice) return BlockDeviceDiscarder.open(file, (await stat(file.path)).rdev);
      return RawFileDiscarder.open(file);
    }
    case 'qcow2':
      if (!(image instanceof Qcow2Image)) throw new Error('qcow2 image is not a Qcow2Image');
      return Qcow2Discarder.open(image.file, image.header, hasBackingLayer(image));
    case 'vdi':
      if (!(image instanceof BlockMappedImage)) throw new Error('vdi image is not block-mapped');
      return VdiDiscarder.open(image.file);
    case 'vmdk':
      return openVmdkDiscarder(image);
    case 'vpc':
      return openVhdDiscarder(image);
    case 'vhdx':
      return openVhdxDiscarder(image);
    default:
      throw new SparsifyError(
        `${image.path}: --in-place is not supported for ${image.format} images; use copy mode: sparsify ${image.path} OUTPUT`,
      );
  }
}

export async function discardInPlace(backend: DiscardBackend, discard: Extents, opts: InPlaceOptions = {}): Promise<InPlaceResult> {
  const compactor = backend.compactor;
  const canRelease = await backend.canRelease();
  const compact = compactor !== undefined && (compactor.required === true || opts.compact === true || (opts.compact === 'auto' && !canRelease));
  if (compact && opts.findZeros && backend.granularity) {
    const t0 = Date.now();
    const zeros = await opts.findZeros(backend.granularity);
    opts.onTrace?.(`in-place: ${zeros.total()} more bytes read as zero and go too (looked in ${((Date.now() - t0) / 1000).toFixed(2)} s)`);
    discard = discard.union(zeros);
  }
  const ranges = backend.align(discard);
  const planned = ranges.total();
  opts.onTrace?.(
    `in-place: ${backend.description}; ${ranges.count} ranges, ${planned} bytes; ` +
      `release ${canRelease ? 'yes' : 'no'}, compact ${compact ? 'yes' : compactor ? 'no' : 'not possible'}`,
  );
  if (!canRelease && !compact) {
    const where = opts.path ? `${opts.path}: ` : '';
    throw discardUnsupported(
      `${where}the storage cannot punch holes or discard` +
        (compactor ? '; --compact gives the space back by moving the kept data down and shortening the image' : ''),
    );
  }
  // Progress in plan bytes; when compacting, the moves are the second half of the bar (their total
  // is only known once the discard is done).
  const total = compact ? 2 * Math.max(planned, 1) : planned;
  opts.onProgress?.({ done: 0, total });
  const r = await backend.discard(ranges, {
    onProgress: (done) => opts.onProgress?.({ done: Math.min(done, planned), total }),
    signal: opts.signal,
    warn: (m) => opts.onWarning?.(m),
    zero: opts.zero,
    release: canRelease && !compact,
  });
  const result: InPlaceResult = { planned, discarded: r.discarded, kept: r.kept, aborted: r.aborted, released: canRelease };
  if (r.aborted) return result;
  const edges = opts.zero ? opts.zero.subtract(ranges) : undefined;
  if (edges && !edges.isEmpty) {
    if (backend.writeZeros) await backend.writeZeros(edges);
    else opts.onWarning?.(`${edges.total()} bytes at the unaligned edges of --zero devices were left as they were`);
  }
  opts.onProgress?.({ done: compact ? total / 2 : planned, total });
  opts.onTrace?.('in-place: discard done');
  if (compact) {
    const half = total / 2;
    result.compaction = await compactor.compact({
      onProgress: (done, of) => opts.onProgress?.({ done: half + Math.floor((half * Math.min(done, of)) / Math.max(of, 1)), total }),
      signal: opts.signal,
      warn: (m) => opts.onWarning?.(m),
      release: canRelease,
      zero: opts.zero,
    });
    result.aborted = result.compaction.aborted;
    opts.onTrace?.(`in-place: compaction moved ${result.compaction.moved} bytes; the image ends at ${result.compaction.endAfter}`);
    if (!result.aborted) opts.onProgress?.({ done: total, total });
  } else if (compactor) {
    result.compactableEnd = await compactor.plannedEnd();
  }
  return result;
}
