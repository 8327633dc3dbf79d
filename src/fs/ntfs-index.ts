/**
 * NTFS directory lookup: find a name in a directory's $I30 index. The index root (resident) and
 * every in-use index block (INDX records in $INDEX_ALLOCATION, per $BITMAP) are scanned in full
 * rather than descended by collation order, so no upcase table is needed; the name comparison is
 * ASCII case-insensitive, which is enough for the fixed names we look for.
 */
import { CorruptError } from '../io/errors.js';
import type { Volume } from '../layout/volume.js';
import { ATTR, applyFixups, readRuns, type MftRecord, type NtfsBoot } from './ntfs-records.js';

/** Index blocks scanned at most: a root directory with more is not worth the time, and we say so. */
const MAX_INDEX_BLOCKS = 4096;

export interface IndexHit {
  /** MFT record number of the file. */
  record: number;
  name: string;
}

/** Scan index entries in `buf` from `start` to `end` (an index header's entry list). */
function scanEntries(buf: Buffer, start: number, end: number, wanted: string, where: string, hits: IndexHit[]): void {
  let pos = start;
  for (let n = 0; pos + 16 <= end; n++) {
    if (n > 65536) throw new CorruptError(`ntfs: ${where} has too many index entries`);
    const len = buf.readUInt16LE(pos + 8);
    const keyLen = buf.readUInt16LE(pos + 10);
    const flags = buf.readUInt32LE(pos + 12);
    if (len < 16 || pos + len > end || 16 + keyLen > len) throw new CorruptError(`ntfs: ${where} has a malformed index entry at byte ${pos}`);
    if (flags & 2) return; // last entry: no key
    if (keyLen >= 66) {
      const nameLen = buf[pos + 16 + 64]!;
      if (66 + nameLen * 2 > keyLen) throw new CorruptError(`ntfs: ${where} has a file name past its index entry at byte ${pos}`);
      const name = buf.toString('utf16le', pos + 16 + 66, pos + 16 + 66 + nameLen * 2);
      if (name.toLowerCase() === wanted) hits.push({ record: Number(buf.readBigUInt64LE(pos) & 0xffffffffffffn), name });
    }
    pos += len;
  }
  throw new CorruptError(`ntfs: ${where} has an index without a last entry`);
}

/** Every entry of directory `dir` whose name equals `wanted` (lower case), from all index nodes. */
export async function findInDirectory(volume: Volume, boot: NtfsBoot, dir: MftRecord, wanted: string): Promise<IndexHit[]> {
  const where = `MFT record ${dir.number} $I30`;
  const hits: IndexHit[] = [];
  const root = dir.attributes.find((a) => a.type === ATTR.indexRoot && a.name === '$I30');
  if (!root?.value || root.value.length < 32) throw new CorruptError(`ntfs: ${where} has no index root`);
  const v = root.value;
  const blockSize = v.readUInt32LE(8);
  const entriesOff = v.readUInt32LE(16);
  const indexLen = v.readUInt32LE(20);
  if (16 + indexLen > v.length || entriesOff > indexLen) throw new CorruptError(`ntfs: ${where} index root has invalid sizes`);
  scanEntries(v, 16 + entriesOff, 16 + indexLen, wanted, `${where} index root`, hits);
  if (!(v[28]! & 1)) return hits; // small index: the root is all there is

  const alloc = dir.attributes.find((a) => a.type === ATTR.indexAllocation && a.name === '$I30');
  const bitmap = dir.attributes.find((a) => a.type === ATTR.bitmap && a.name === '$I30');
  if (!alloc?.runs || alloc.startVcn !== 0) throw new CorruptError(`ntfs: ${where} is a large index without its allocation in the base record`);
  if (blockSize < 512 || blockSize > 65536 || blockSize & (blockSize - 1)) throw new CorruptError(`ntfs: ${where} has an invalid index block size ${blockSize}`);
  const blocks = Math.floor((alloc.dataSize ?? 0) / blockSize);
  if (blocks > MAX_INDEX_BLOCKS) throw new CorruptError(`ntfs: ${where} has ${blocks} index blocks, more than we scan`);
  let inUse: Buffer | undefined;
  if (bitmap?.value) inUse = bitmap.value;
  else if (bitmap?.runs) inUse = await readRuns(volume, bitmap.runs, boot.clusterSize, 0, Math.ceil(blocks / 8), `${where} $BITMAP`);
  for (let i = 0; i < blocks; i++) {
    if (inUse && (i >> 3 >= inUse.length || !(inUse[i >> 3]! & (1 << (i & 7))))) continue;
    const blockWhere = `${where} index block ${i}`;
    const block = await readRuns(volume, alloc.runs, boot.clusterSize, i * blockSize, blockSize, blockWhere);
    applyFixups(block, 'INDX', blockWhere);
    const hdr = 24;
    const eOff = block.readUInt32LE(hdr);
    const eLen = block.readUInt32LE(hdr + 4);
    if (hdr + eLen > block.length || eOff > eLen) throw new CorruptError(`ntfs: ${blockWhere} has invalid sizes`);
    scanEntries(block, hdr + eOff, hdr + eLen, wanted, blockWhere, hits);
  }
  return hits;
}
