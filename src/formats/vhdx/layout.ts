/**
 * Everything a VHDX reader or updater needs before touching payload: the file identifier, the
 * header pair, the log (replayed in memory when asked: the in-place path), the region table, the
 * metadata and the BAT. With a pending log, every structure is read as the replay will leave it,
 * and nothing is written: the in-place updater writes the replay once every refusal has passed.
 */
import type { BlockFile } from '../../io/file.js';
import { CorruptError, SparsifyError, hex } from '../../io/errors.js';
import { readPendingLog, type PendingLog } from './log-replay.js';
import {
  SIGNATURE, batEntries, chunkRatio, fileSource, readHeaderPair, readHeaders, readMetadata, readRegions,
  type Region, type StructSource, type VhdxHeader, type VhdxMetadata,
} from './structures.js';

export interface VhdxLayout {
  /** The current header and both slots (undefined where invalid). */
  header: VhdxHeader;
  slots: Array<VhdxHeader | undefined>;
  /** The log to replay before writing (in-place only); its overlay is what `src` reads through. */
  pending?: PendingLog;
  src: StructSource;
  regions: { bat: Region; metadata: Region; others: Region[] };
  md: VhdxMetadata;
  /** Payload blocks per sector-bitmap entry, payload blocks, and BAT entries (both kinds). */
  ratio: number;
  blocks: number;
  entries: number;
  /** The BAT entries as stored (entries * 8 bytes). */
  bat: Buffer;
}

/**
 * Read the structures. `replayInMemory` (in-place mode) accepts a log to replay and reads through
 * it; otherwise a non-zero log GUID is refused as before (copy mode, --analyze).
 */
export async function loadVhdx(file: BlockFile, o: { replayInMemory: boolean }): Promise<VhdxLayout> {
  const sig = Buffer.alloc(8);
  await file.readExact(sig, 0, 'vhdx file identifier');
  if (sig.toString('latin1') !== SIGNATURE) throw new CorruptError(`vhdx: ${file.path}: no 'vhdxfile' identifier at 0x0`);
  let header: VhdxHeader;
  let slots: Array<VhdxHeader | undefined> = [];
  let pending: PendingLog | undefined;
  if (o.replayInMemory) {
    ({ current: header, slots } = await readHeaderPair(file));
    pending = await readPendingLog(file, header);
  } else {
    header = await readHeaders(file);
  }
  const src = pending ? pending.overlay.source(file) : fileSource(file);
  const regions = await readRegions(file, src);
  const md = await readMetadata(file, regions.metadata, src);
  if (md.hasParent) {
    throw new SparsifyError(`vhdx: ${file.path}: differencing VHDX images (with a parent) are not supported yet`);
  }
  const ratio = chunkRatio(md);
  const blocks = Math.ceil(md.virtualSize / md.blockSize);
  const entries = blocks === 0 ? 0 : batEntries(blocks, ratio, false);
  if (entries * 8 > regions.bat.length) {
    throw new CorruptError(`vhdx: ${file.path}: BAT region at ${hex(regions.bat.offset)} (${regions.bat.length} bytes) is too small for ${entries} entries`);
  }
  const bat = Buffer.alloc(entries * 8);
  await src.read(bat, regions.bat.offset, 'vhdx BAT');
  return { header, slots, pending, src, regions, md, ratio, blocks, entries, bat };
}
