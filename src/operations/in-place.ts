/**
 * In-place mode end to end: open the image for writing under QEMU write locks, analyze, plan,
 * discard the planned ranges through the format's discard backend (hole punching, BLKDISCARD,
 * metadata updates) and, where asked or needed, compact the image (move the kept data down and
 * shorten it), in an order that survives a power cut at any instant.
 */
import { stat } from 'node:fs/promises';
import { SparsifyError } from '../io/errors.js';
import { BlockFile } from '../io/file.js';
import { openImage } from '../formats/open.js';
import type { DiskImage } from '../formats/types.js';
import { RawImage } from '../formats/raw.js';
import { analyzeDisk } from '../analyze/analyze.js';
import { allInfo, walk, type DiskMap } from '../analyze/diskmap.js';
import { makePlan, type Plan } from '../plan/plan.js';
import { operationWarnings } from '../plan/warnings.js';
import { snapshotAdvice } from '../analyze/report.js';
import { discardBackendFor, discardInPlace, type CompactMode } from '../execute/in-place.js';
import { zeroBlocks } from '../execute/zero-blocks.js';
import type { OperationEvents } from './events.js';
import type { KeyProvider } from '../layout/luks/keys.js';
import { isNbdUri } from '../io/nbd/uri.js';

export interface InPlaceRequest extends OperationEvents {
  path: string;
  /** Input format; detected when absent. */
  format?: string;
  ignore?: string[];
  zero?: string[];
  /**
   * Keys for LUKS volumes (KeyStore from the CLI's --key options or `loadKeysFile`): a volume
   * with a key is sparsified inside, one without is kept whole. Not disposed here.
   */
  keys?: KeyProvider;
  /**
   * Compact after the discard: true (--compact), false (the default: as virt-sparsify), or 'auto':
   * only where the storage cannot release space. Formats that must compact (vdi) always do.
   */
  compact?: CompactMode;
}

export interface InPlaceReport {
  map: DiskMap;
  plan: Plan;
  format: string;
  /** Bytes of the virtual disk discarded (made unallocated or zero). */
  bytesDiscarded: number;
  /** Host bytes the image occupied before and after (du). */
  allocatedBefore: number;
  allocatedAfter: number;
  /** Bytes of the plan, aligned to what the storage can discard (the progress total). */
  bytesPlanned?: number;
  /** Bytes of the plan left in place (reasons were warned). */
  bytesKept?: number;
  /** Freed space was released to the host (holes, BLKDISCARD); false on storage that cannot. */
  released: boolean;
  /** Compaction ran. */
  compacted: boolean;
  /**
   * Where the image ends, before and after: the file's length; on a block device, the end of the
   * image's last used byte when compaction ran, else the device's size.
   */
  endBefore: number;
  endAfter: number;
  /** Bytes compaction moved. */
  bytesMoved: number;
  /** Host bytes the truncation released (measured around it); the rest of the drop came from holes. */
  releasedByTruncation: number;
  /** When the format can compact and compaction did not run: where it would end the image. */
  compactableEnd?: number;
  isBlockDevice: boolean;
  /**
   * The image is an NBD export: allocatedBefore/After are what the server's block status says is
   * allocated (not holes), read before the first change and after the final FLUSH.
   */
  nbd?: boolean;
}

/** Image formats we know by magic: a file carrying one of these is never sparsified as raw by guess. */
const FOREIGN_MAGICS: Array<{ name: string; at: number; magic: Buffer }> = [
  { name: 'qcow2', at: 0, magic: Buffer.from([0x51, 0x46, 0x49, 0xfb]) },
  { name: 'vdi', at: 0x40, magic: Buffer.from([0x7f, 0x10, 0xda, 0xbe]) },
  { name: 'vmdk', at: 0, magic: Buffer.from('KDMV') },
  { name: 'vmdk', at: 0, magic: Buffer.from('# Disk DescriptorFile') },
  { name: 'vhdx', at: 0, magic: Buffer.from('vhdxfile') },
  { name: 'vpc', at: 0, magic: Buffer.from('conectix') },
];

/** An image format the registry does not know yet would open as raw: refuse rather than punch it. */
async function refuseDisguisedFormat(image: DiskImage, explicit: string | undefined): Promise<void> {
  if (explicit !== undefined || !(image instanceof RawImage) || image.file.isBlockDevice) return;
  const head = Buffer.alloc(Math.min(512, image.virtualSize));
  await image.read(head, 0);
  for (const m of FOREIGN_MAGICS) {
    if (head.length >= m.at + m.magic.length && head.subarray(m.at, m.at + m.magic.length).equals(m.magic)) {
      throw new SparsifyError(`${image.path}: looks like a ${m.name} image, which this build cannot sparsify in place; give --format raw if it really is a raw disk`);
    }
  }
}

async function allocated(path: string): Promise<number> {
  const st = await stat(path);
  return st.isBlockDevice() ? 0 : st.blocks * 512;
}

/** A file's length, or a block device's size. */
async function fileEnd(path: string): Promise<number> {
  const st = await stat(path);
  if (!st.isBlockDevice()) return st.size;
  const f = await BlockFile.open(path);
  try {
    return f.size;
  } finally {
    await f.close();
  }
}

/** What the image has to say when --compact is asked of a format with nothing to compact. */
function noCompaction(format: string, isDevice: boolean): string {
  return format === 'raw'
    ? `a raw ${isDevice ? 'device' : 'image'} maps the guest's bytes one to one: there is nothing to compact (--compact ignored)`
    : `${format} images cannot be compacted (--compact ignored)`;
}

/** virt-sparsify's step messages: "Trimming /dev/sda1", "Zeroing ...", swap and volume groups. */
function announce(map: DiskMap, plan: Plan, status: (t: string) => void): void {
  const nodes = new Map([...walk(map.root)].map((n) => [n.device, n]));
  for (const s of plan.steps) {
    const n = nodes.get(s.device);
    if (s.action === 'zero-device') status(`Zeroing ${s.device}`);
    else if (s.action === 'ignore') status(`Ignoring ${s.device}`);
    else if (n?.contentKind === 'swap') status(`Clearing Linux swap on ${s.device}`);
    else if (n?.contentKind === 'volume-group') status(`Discard space in volgroup ${String(n.details['vg'] ?? s.device)}`);
    else status(`Trimming ${s.device}`);
  }
}

export async function sparsifyInPlace(req: InPlaceRequest): Promise<InPlaceReport> {
  const nbd = isNbdUri(req.path);
  let allocatedBefore = nbd ? 0 : await allocated(req.path).catch(() => 0);
  req.onStatus?.('Examine disk');
  let top: BlockFile | undefined;
  const image = await openImage(req.path, { format: req.format, lock: 'write', writable: true, warn: req.onWarning, onTopFile: (f) => (top = f) });
  let report: Omit<InPlaceReport, 'allocatedAfter' | 'endAfter'> & { endAfter?: number };
  let nbdAllocatedAfter = 0;
  try {
    await refuseDisguisedFormat(image, req.format);
    // Refusals (format, dirty qcow2, snapshots...) come before the analysis.
    const backend = await discardBackendFor(image);
    if (nbd && (req.compact === true || backend.compactor?.required)) {
      throw new SparsifyError(`${image.path}: compacting ${image.format} in place over NBD is not supported yet (an export cannot be shortened); ${req.compact === true ? 'leave out --compact' : 'use copy mode'}`);
    }
    if (nbd && top) allocatedBefore = await top.allocatedBytes();
    const isBlockDevice = nbd || (await stat(req.path)).isBlockDevice();
    if (req.compact === true && !backend.compactor) req.onInfo?.(noCompaction(image.format, isBlockDevice));
    const map = await analyzeDisk(image, { trace: req.onTrace, keys: req.keys });
    for (const i of allInfo(map)) req.onInfo?.(i);
    const advice = snapshotAdvice(map);
    if (advice) req.onInfo?.(advice);
    const plan = makePlan(map, { ignore: req.ignore, zero: req.zero });
    for (const w of operationWarnings(map, plan, 'in-place')) req.onWarning?.(w);
    for (const u of plan.unmatched) req.onWarning?.(`${u}: no such filesystem or volume on the disk; ignored`);
    if (req.signal?.aborted) throw new SparsifyError('quit (^C) at user request');
    announce(map, plan, (t) => req.onStatus?.(t));

    const endBefore = nbd ? (top?.size ?? 0) : await fileEnd(req.path);
    const r = await discardInPlace(backend, plan.discard, {
      zero: plan.zero,
      onProgress: req.onProgress,
      onWarning: req.onWarning,
      onTrace: req.onTrace,
      signal: req.signal,
      compact: nbd ? false : (req.compact ?? false),
      path: image.path,
      findZeros: (g) => zeroBlocks(image, plan.discard.complement(0, image.virtualSize), g, req.signal),
    });
    if (r.aborted) throw new SparsifyError('quit (^C) at user request');
    const c = r.compaction;
    report = {
      map,
      plan,
      format: image.format,
      bytesDiscarded: r.discarded,
      allocatedBefore,
      bytesPlanned: r.planned,
      bytesKept: r.kept,
      released: r.released,
      compacted: c !== undefined,
      endBefore: c ? c.endBefore : endBefore,
      endAfter: c?.endAfter,
      bytesMoved: c?.moved ?? 0,
      releasedByTruncation: c?.releasedByTruncation ?? 0,
      compactableEnd: r.compactableEnd,
      isBlockDevice,
      ...(nbd ? { nbd } : {}),
    };
    if (nbd && top) nbdAllocatedAfter = await top.allocatedBytes();
  } finally {
    await image.close();
  }
  if (nbd) return { ...report, endAfter: report.endAfter ?? report.endBefore, allocatedAfter: nbdAllocatedAfter };
  return {
    ...report,
    endAfter: report.endAfter ?? (await fileEnd(req.path)),
    allocatedAfter: await allocated(req.path).catch(() => 0),
  };
}
