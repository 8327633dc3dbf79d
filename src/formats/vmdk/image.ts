/**
 * A VMDK disk: a descriptor (embedded in a sparse file, or a text file) listing extents that are
 * concatenated into the virtual disk: SPARSE (grain tables), FLAT (raw file at an offset), ZERO.
 * Extent paths are relative to the descriptor's folder. A parentFileNameHint makes a delta disk.
 */
import { dirname, resolve } from 'node:path';
import { BlockFile } from '../../io/file.js';
import { CorruptError, SparsifyError, hex } from '../../io/errors.js';
import { ExtentMerger, readBacking } from '../common/blockimage.js';
import type { DiskImage, ImageExtent, LayerInfo, OpenContext } from '../types.js';
import { looksLikeDescriptor, parseDescriptor, type Descriptor } from './descriptor.js';
import { SECTOR, isSparseHeader, parseSparseHeader, readFooterHeader, type SparseHeader } from './header.js';
import { SparseExtent } from './sparse.js';

const MAX_DESCRIPTOR = 1 << 20;

/** The parent seen from one extent: its window [base, base+size) of the parent disk. */
class ParentWindow implements DiskImage {
  readonly format = 'window';
  constructor(
    private readonly parent: DiskImage,
    private readonly base: number,
    readonly virtualSize: number,
  ) {}
  get path(): string {
    return this.parent.path;
  }
  read(buf: Buffer, offset: number): Promise<void> {
    return readBacking(this.parent, buf, this.base + offset);
  }
  async *extents(start: number, end: number): AsyncIterable<ImageExtent> {
    const pEnd = Math.min(this.base + end, this.parent.virtualSize);
    let pos = start;
    if (this.base + start < pEnd) {
      for await (const e of this.parent.extents(this.base + start, pEnd)) {
        yield { start: e.start - this.base, end: e.end - this.base, kind: e.kind };
        pos = e.end - this.base;
      }
    }
    if (pos < end) yield { start: pos, end, kind: 'unallocated' };
  }
  layers(): LayerInfo[] {
    return [];
  }
  async close(): Promise<void> {}
}

/** One piece of the disk: reads and extents relative to its own start. */
interface Piece {
  start: number;
  size: number;
  image?: DiskImage; // SPARSE, or FLAT as a window on a file
  flat?: { file: BlockFile; offset: number };
}

async function* flatExtents(file: BlockFile, offset: number, start: number, end: number): AsyncIterable<ImageExtent> {
  // Holes in the host file read as zero; everything else is data (as the guest wrote it).
  let pos = start;
  while (pos < end) {
    const d = file.seekData(offset + pos);
    const dataAt = d < 0 ? end : Math.min(end, Math.max(pos, d - offset));
    if (dataAt > pos) yield { start: pos, end: dataAt, kind: 'zero' };
    if (dataAt >= end) return;
    const h = file.seekHole(offset + dataAt) - offset;
    const stop = h <= dataAt ? end : Math.min(end, h);
    yield { start: dataAt, end: stop, kind: 'data' };
    pos = stop;
  }
}

export class VmdkImage implements DiskImage {
  readonly format = 'vmdk';

  constructor(
    readonly path: string,
    readonly virtualSize: number,
    private readonly pieces: Piece[],
    private readonly files: BlockFile[],
    private readonly parent: DiskImage | undefined,
    private readonly subformat: string,
    private readonly allocated: number,
  ) {}

  /** The file the image was opened from (the descriptor, or the sparse file with its descriptor). */
  get file(): BlockFile {
    return this.files[0]!;
  }

  private pieceAt(offset: number): number {
    let lo = 0;
    let hi = this.pieces.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.pieces[mid]!.start <= offset) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  async read(buf: Buffer, offset: number): Promise<void> {
    if (offset < 0 || offset + buf.length > this.virtualSize) {
      throw new SparsifyError(`${this.path}: read at ${hex(offset)} (+${buf.length}) past end of disk (${hex(this.virtualSize)})`);
    }
    let pos = offset;
    const end = offset + buf.length;
    for (let i = this.pieceAt(offset); pos < end; i++) {
      const p = this.pieces[i]!;
      const stop = Math.min(end, p.start + p.size);
      const piece = buf.subarray(pos - offset, stop - offset);
      if (p.image) await p.image.read(piece, pos - p.start);
      else if (p.flat) await p.flat.file.readExact(piece, p.flat.offset + pos - p.start, 'vmdk flat extent');
      else piece.fill(0);
      pos = stop;
    }
  }

  extents(start: number, end: number): AsyncIterable<ImageExtent> {
    return this.pieceExtents(start, end, false);
  }

  /** A delta disk's own grains: its sparse extents' own allocation, not the parent's. */
  ownExtents(start: number, end: number): AsyncIterable<ImageExtent> {
    return this.pieceExtents(start, end, true);
  }

  private async *pieceExtents(start: number, end: number, own: boolean): AsyncIterable<ImageExtent> {
    end = Math.min(end, this.virtualSize);
    start = Math.max(0, start);
    if (start >= end) return;
    const m = new ExtentMerger();
    for (let i = this.pieceAt(start); i < this.pieces.length; i++) {
      const p = this.pieces[i]!;
      if (p.start >= end) break;
      const s = Math.max(start, p.start) - p.start;
      const e = Math.min(end, p.start + p.size) - p.start;
      const inner: AsyncIterable<ImageExtent> = p.image
        ? own && p.image.ownExtents
          ? p.image.ownExtents(s, e)
          : p.image.extents(s, e)
        : p.flat
          ? flatExtents(p.flat.file, p.flat.offset, s, e)
          : (async function* () {
              yield { start: s, end: e, kind: 'zero' as const };
            })();
      for await (const x of inner) {
        const out = m.push(x.start + p.start, x.end + p.start, x.kind);
        if (out) yield out;
      }
    }
    const last = m.flush();
    if (last) yield last;
  }

  layers(): LayerInfo[] {
    const own: LayerInfo = {
      path: this.path,
      format: 'vmdk',
      virtualSize: this.virtualSize,
      allocatedBytes: this.allocated,
      details: { subformat: this.subformat, extents: this.pieces.length },
    };
    return [own, ...(this.parent ? this.parent.layers() : [])];
  }

  async close(): Promise<void> {
    for (const f of this.files) await f.close();
    if (this.parent) await this.parent.close();
  }
}

async function sparseHeaderOf(file: BlockFile): Promise<SparseHeader> {
  const b = Buffer.alloc(SECTOR);
  await file.readExact(b, 0, 'vmdk header');
  let h = parseSparseHeader(b, file.path, 0);
  if (h.gdOffset < 0) h = await readFooterHeader(file);
  return h;
}

async function embeddedDescriptor(file: BlockFile, h: SparseHeader): Promise<Descriptor | undefined> {
  if (h.descriptorOffset === 0 || h.descriptorSize === 0) return undefined;
  const at = h.descriptorOffset * SECTOR;
  const len = Math.min(h.descriptorSize * SECTOR, MAX_DESCRIPTOR);
  if (at + len > file.size) throw new CorruptError(`vmdk: ${file.path}: embedded descriptor at ${hex(at)} lies beyond end of file`);
  const b = Buffer.alloc(len);
  await file.readExact(b, at, 'vmdk descriptor');
  const text = b.toString('latin1').replace(/\0[\s\S]*$/, '');
  return parseDescriptor(text, file.path);
}

export async function openVmdk(file: BlockFile, ctx: OpenContext): Promise<DiskImage> {
  const head = Buffer.alloc(Math.min(file.size, SECTOR));
  await file.readExact(head, 0, 'vmdk header');
  const files: BlockFile[] = [file];
  let parent: DiskImage | undefined;
  const closeAll = async (): Promise<void> => {
    for (const f of files.slice(1)) await f.close();
    if (parent) await parent.close();
  };
  try {
    let desc: Descriptor | undefined;
    let selfHeader: SparseHeader | undefined;
    if (isSparseHeader(head)) {
      selfHeader = await sparseHeaderOf(file);
      desc = await embeddedDescriptor(file, selfHeader);
    } else if (looksLikeDescriptor(head)) {
      if (file.size > MAX_DESCRIPTOR) throw new SparsifyError(`vmdk: ${file.path}: descriptor file is too large`);
      const b = Buffer.alloc(file.size);
      await file.readExact(b, 0, 'vmdk descriptor');
      desc = parseDescriptor(b.toString('latin1'), file.path);
      if (desc.extents.length === 0) throw new CorruptError(`vmdk: ${file.path}: descriptor lists no extents`);
    } else {
      throw new CorruptError(`vmdk: ${file.path}: neither a KDMV sparse header nor a text descriptor`);
    }

    if (desc && desc.parentCID !== 'ffffffff') {
      if (!desc.parentFileNameHint) throw new CorruptError(`vmdk: ${file.path}: delta disk without parentFileNameHint`);
      parent = await ctx.openBacking(desc.parentFileNameHint, 'vmdk', file.path);
    }
    const dir = dirname(file.path);
    const pieces: Piece[] = [];
    let pos = 0;
    const window = (size: number): DiskImage | undefined => (parent ? new ParentWindow(parent, pos, size) : undefined);

    // A sparse file whose descriptor is missing or names one sparse extent is its own single extent.
    const lines = desc?.extents ?? [];
    if (selfHeader && (lines.length <= 1)) {
      const size = selfHeader.capacity * SECTOR;
      pieces.push({ start: 0, size, image: await SparseExtent.open(file, selfHeader, size, window(size)) });
      pos = size;
    } else {
      if (selfHeader) throw new SparsifyError(`vmdk: ${file.path}: sparse file with a multi-extent embedded descriptor is not supported`);
      for (const [i, x] of lines.entries()) {
        const size = x.sectors * SECTOR;
        if (x.type === 'ZERO' || x.access === 'NOACCESS') {
          pieces.push({ start: pos, size });
        } else if (x.type === 'FLAT' || x.type === 'SPARSE' || x.type === 'VMFS') {
          if (!x.file) throw new CorruptError(`vmdk: ${file.path}: extent ${i} has no file name`);
          const f = await BlockFile.open(resolve(dir, x.file));
          files.push(f);
          if (x.type === 'SPARSE') {
            const h = await sparseHeaderOf(f);
            if (h.capacity < x.sectors) throw new CorruptError(`vmdk: ${f.path}: sparse extent holds ${h.capacity} sectors, descriptor says ${x.sectors}`);
            pieces.push({ start: pos, size, image: await SparseExtent.open(f, h, size, window(size)) });
          } else {
            if (x.offset * SECTOR + size > f.size) {
              throw new CorruptError(`vmdk: ${f.path}: flat extent (${x.sectors} sectors at sector ${x.offset}) is longer than the file (${hex(f.size)})`);
            }
            pieces.push({ start: pos, size, flat: { file: f, offset: x.offset * SECTOR } });
          }
        } else {
          throw new SparsifyError(`vmdk: ${file.path}: extent type ${x.type} is not supported`);
        }
        pos += size;
      }
    }
    const nonEmpty = pieces.filter((p) => p.size > 0);
    let allocated = 0;
    for (const f of files) allocated += await f.allocatedBytes();
    const sub = desc?.createType || (selfHeader && selfHeader.flags & 0x10000 ? 'streamOptimized' : 'monolithicSparse');
    return new VmdkImage(file.path, pos, nonEmpty.length ? nonEmpty : [{ start: 0, size: 0 }], files, parent, sub, allocated);
  } catch (e) {
    await closeAll();
    throw e;
  }
}

