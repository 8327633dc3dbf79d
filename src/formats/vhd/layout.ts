/**
 * The host layout of a dynamic or differencing VHD (qemu: vpc) as in-place mode needs it, read and
 * checked before anything is written. On-disk facts (Microsoft's VHD specification; qemu's
 * block/vpc.c for what qemu accepts), all big-endian:
 * - a 512-byte footer at the end of the file and a copy at 0. qemu reads the copy at 0, our reader
 *   the one at the end. It holds no field that depends on the file's length, so the same bytes
 *   can be written at a new end;
 * - the dynamic header ("cxsparse", 1024 bytes, at the footer's data offset): the BAT's offset,
 *   entry count and block size, and parent locators (a differencing disk) whose data lies in the file;
 * - the BAT: a u32 sector number per block, 0xFFFFFFFF for none;
 * - an allocated block is one slot: its sector bitmap (a bit per sector, rounded up to a sector),
 *   then its data.
 * qemu appends a new block at the highest block end (free_data_block_offset, at least the BAT's end
 * rounded up to a sector) and refuses an image in which that lies past the end of the file. It does
 * not zero the new block's data: it counts on the bytes past that point reading as zero.
 * Refused here, before any write: a block past the end of the file, blocks overlapping each other
 * or the metadata, block sizes below 4096 bytes (qemu's bitmap size then differs from the
 * specification's: qemu rounds block_size / 4096 bytes down to 0).
 */
import type { BlockFile } from '../../io/file.js';
import { CorruptError, SparsifyError, hex } from '../../io/errors.js';
import { Extents } from '../../io/extents.js';
import { u64be } from '../common/bytes.js';
import type { HostSlot } from '../common/slot-moves.js';
import { writeU32Entries } from '../common/runs.js';
import { DYN_HEADER_SIZE, FOOTER_SIZE, TYPE_DIFFERENCING, TYPE_DYNAMIC, isFooter, parseFooter, vhdChecksum } from '../common/vhd-footer.js';

export const NO_BLOCK = 0xffffffff;
const SECTOR = 512;
const MIN_BLOCK = 4096;
const MAX_BLOCK = 256 << 20;
const LOCATORS_AT = 576;
const LOCATOR_SIZE = 24;
const LOCATORS = 8;

function roundUp(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}

/** A valid footer (cookie and checksum) in `buf`? */
function validFooter(buf: Buffer): boolean {
  return isFooter(buf) && buf.readUInt32BE(64) === vhdChecksum(buf, 64);
}

export class VhdLayout {
  /** The BAT as on disk (big-endian), kept in step with every entry written. */
  private readonly bat: Buffer;

  private constructor(
    readonly file: BlockFile,
    /** The footer bytes to write at a new end: the one at the end, else the copy at 0. */
    readonly footer: Buffer,
    /** The file ends with a valid footer (our reader reads that one; qemu the copy at 0). */
    readonly tailFooter: boolean,
    readonly differencing: boolean,
    readonly blockSize: number,
    readonly bitmapSize: number,
    readonly batAt: number,
    readonly entries: number,
    bat: Buffer,
    /** qemu's lowest append point: the BAT's end rounded up to a sector. */
    readonly floor: number,
    /** Header, BAT, footer copy and parent locator data: never moved, released or cut off. */
    readonly metadata: Extents,
  ) {
    this.bat = bat;
  }

  /** Bytes of one block's slot: its sector bitmap, then its data. */
  get slot(): number {
    return this.bitmapSize + this.blockSize;
  }

  static async load(file: BlockFile): Promise<VhdLayout> {
    const p = file.path;
    if (file.size < FOOTER_SIZE) throw new CorruptError(`vpc: ${p}: file too small for a footer`);
    const tail = Buffer.alloc(FOOTER_SIZE);
    await file.readExact(tail, file.size - FOOTER_SIZE, 'vpc footer');
    const tailFooter = validFooter(tail);
    let footer = tail;
    if (!tailFooter) {
      footer = Buffer.alloc(FOOTER_SIZE);
      await file.readExact(footer, 0, 'vpc footer copy');
    }
    const f = parseFooter(footer, p, tailFooter ? file.size - FOOTER_SIZE : 0);
    if (f.diskType !== TYPE_DYNAMIC && f.diskType !== TYPE_DIFFERENCING) throw new Error(`vpc: ${p}: not a dynamic or differencing VHD`);

    const at = f.dataOffset;
    if (at < 0 || at + DYN_HEADER_SIZE > file.size) throw new CorruptError(`vpc: ${p}: dynamic header at ${hex(at)} lies beyond end of file`);
    const dh = Buffer.alloc(DYN_HEADER_SIZE);
    await file.readExact(dh, at, 'vpc dynamic header');
    if (dh.toString('latin1', 0, 8) !== 'cxsparse') throw new CorruptError(`vpc: ${p}: dynamic header at ${hex(at)} has bad cookie`);
    if (dh.readUInt32BE(36) !== vhdChecksum(dh, 36)) throw new CorruptError(`vpc: ${p}: dynamic header at ${hex(at)} has bad checksum`);
    const batAt = u64be(dh, 16, `vpc: ${p}: BAT offset`);
    const entries = dh.readUInt32BE(28);
    const blockSize = dh.readUInt32BE(32);
    if (blockSize > MAX_BLOCK || (blockSize & (blockSize - 1)) !== 0 || blockSize === 0) {
      throw new CorruptError(`vpc: ${p}: dynamic header at ${hex(at)}: block size ${blockSize} is invalid`);
    }
    if (blockSize < MIN_BLOCK) {
      throw new SparsifyError(`vpc: ${p}: block size ${blockSize} is below 4096 bytes, where qemu and the VHD specification disagree on the sector bitmap's size; --in-place is not supported, use copy mode`);
    }
    if (batAt + entries * 4 > file.size) {
      throw new CorruptError(`vpc: ${p}: BAT at ${hex(batAt)} (${entries} entries) lies beyond end of file (size ${hex(file.size)})`);
    }
    const bat = Buffer.alloc(entries * 4);
    await file.readExact(bat, batAt, 'vpc BAT');
    const bitmapSize = roundUp(blockSize / SECTOR / 8, SECTOR);

    const meta: Array<{ start: number; end: number; what: string }> = [
      { start: 0, end: FOOTER_SIZE, what: 'the footer copy' },
      { start: at, end: at + DYN_HEADER_SIZE, what: 'the dynamic header' },
      { start: batAt, end: roundUp(batAt + entries * 4, SECTOR), what: 'the BAT' },
      // A dynamic disk has no parent: its locator fields are not looked at (qemu does not either).
      ...(f.diskType === TYPE_DIFFERENCING ? parentLocators(dh, file) : []),
    ];
    const layout = new VhdLayout(
      file, footer, tailFooter, f.diskType === TYPE_DIFFERENCING, blockSize, bitmapSize, batAt, entries, bat,
      roundUp(batAt + entries * 4, SECTOR), new Extents(meta),
    );
    layout.checkBlocks(meta);
    return layout;
  }

  /** Every block inside the file (qemu's rule), none overlapping another or the metadata. */
  private checkBlocks(meta: ReadonlyArray<{ start: number; end: number; what: string }>): void {
    const p = this.file.path;
    const slots = this.slots();
    for (const s of slots) {
      const entryAt = hex(this.batAt + s.key * 4);
      if (s.offset + s.length > this.file.size) {
        throw new CorruptError(
          `vpc: ${p}: BAT entry ${s.key} (at ${entryAt}) points to a block at ${hex(s.offset)}-${hex(s.offset + s.length)}, past the end of the file (size ${hex(this.file.size)}); qemu refuses this image too`,
        );
      }
      for (const m of meta) {
        if (s.offset < m.end && m.start < s.offset + s.length) {
          throw new CorruptError(`vpc: ${p}: BAT entry ${s.key} (at ${entryAt}) points to a block at ${hex(s.offset)} that overlaps ${m.what} at ${hex(m.start)}`);
        }
      }
    }
    const sorted = [...slots].sort((a, b) => a.offset - b.offset);
    for (let k = 1; k < sorted.length; k++) {
      const a = sorted[k - 1]!;
      const b = sorted[k]!;
      if (a.offset + a.length > b.offset) {
        throw new CorruptError(`vpc: ${p}: BAT entries ${a.key} and ${b.key} point to overlapping blocks at ${hex(a.offset)} and ${hex(b.offset)}`);
      }
    }
  }

  entry(i: number): number {
    return this.bat.readUInt32BE(i * 4);
  }

  /** The slots the BAT points at; `key` is the block index. */
  slots(): HostSlot[] {
    const out: HostSlot[] = [];
    for (let i = 0; i < this.entries; i++) {
      const e = this.entry(i);
      if (e !== NO_BLOCK) out.push({ offset: e * SECTOR, length: this.slot, key: i });
    }
    return out;
  }

  /** Host bytes in use: the metadata and every slot the BAT points at. */
  used(): Extents {
    return this.metadata.union(new Extents(this.slots().map((s) => ({ start: s.offset, end: s.offset + s.length }))));
  }

  /** qemu's free_data_block_offset, and never below the metadata: where the footer goes when compacting. */
  dataEnd(): number {
    let end = this.floor;
    const m = this.metadata.toArray();
    if (m.length) end = Math.max(end, m[m.length - 1]!.end);
    for (let i = 0; i < this.entries; i++) {
      const e = this.entry(i);
      if (e !== NO_BLOCK) end = Math.max(end, e * SECTOR + this.slot);
    }
    return end;
  }

  /**
   * Write the given BAT entries (block index -> sector or NO_BLOCK), one write per run of
   * neighbouring entries; the caller makes them durable. Each entry is 4 aligned bytes inside one
   * sector, so a torn write leaves every entry old or new.
   */
  async writeEntries(changed: ReadonlyMap<number, number>): Promise<void> {
    const blocks = [...changed.keys()].sort((a, b) => a - b);
    const runs = await writeU32Entries(this.file, this.batAt, blocks, (b) => changed.get(b)!, 'be');
    for (const r of runs) r.bytes.copy(this.bat, r.first * 4);
  }
}

/** The data of a differencing disk's parent locators (the bytes they hold), as host ranges to keep. */
function parentLocators(dh: Buffer, file: BlockFile): Array<{ start: number; end: number; what: string }> {
  const out: Array<{ start: number; end: number; what: string }> = [];
  for (let i = 0; i < LOCATORS; i++) {
    const at = LOCATORS_AT + i * LOCATOR_SIZE;
    if (dh.readUInt32BE(at) === 0) continue;
    const len = dh.readUInt32BE(at + 8);
    const off = Number(dh.readBigUInt64BE(at + 16));
    if (len === 0 || !Number.isSafeInteger(off) || off >= file.size) continue;
    const end = Math.min(file.size, off + roundUp(len, SECTOR));
    out.push({ start: off, end, what: `parent locator ${i}'s data` });
  }
  return out;
}
