/**
 * VHD, qemu's "vpc" (big-endian). Fixed: raw data then a 512-byte footer. Dynamic/differencing: footer
 * copy at 0, a dynamic header ("cxsparse") pointing at the BAT (u32 sector per block, 0xFFFFFFFF none);
 * each allocated block is a sector bitmap followed by the data. In a differencing disk the bitmap says
 * which sectors are here; the rest come from the parent named by the parent locators.
 */
import { existsSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import type { BlockFile } from '../io/file.js';
import { CorruptError, SparsifyError, hex } from '../io/errors.js';
import { BlockMappedImage, type BlockState } from './common/blockimage.js';
import { u64be } from './common/bytes.js';
import {
  DirectBlockWriter, OutputFile, boolOption, checkOptions, choiceOption, randomGuid, roundUp,
} from './common/blockwriter.js';
import {
  DYN_HEADER_SIZE, FOOTER_SIZE, TYPE_DIFFERENCING, TYPE_DYNAMIC, TYPE_FIXED, buildFooter, isFooter, parseFooter,
  planSize, vhdChecksum, virtualSizeOf, type VhdFooter,
} from './common/vhd-footer.js';
import type { DiskImage, ImageExtent, FormatDriver, FormatOptions, ImageWriter, OpenContext, WriterContext } from './types.js';

const NO_BLOCK = 0xffffffff;
const DEFAULT_BLOCK = 2 << 20;
const BITMAP_CACHE = 256;

class FixedVhd extends BlockMappedImage {
  protected lookup(): BlockState {
    return { kind: 'data', host: 0 };
  }
  /** Holes in the host file read as zero: report them as such (SEEK_DATA/SEEK_HOLE), the rest as data. */
  protected override async *layerExtents(start: number, end: number): AsyncIterable<ImageExtent> {
    const dataEnd = Math.min(end, this.file.size - FOOTER_SIZE);
    let pos = start;
    while (pos < dataEnd) {
      const d = this.file.seekData(pos);
      const dataAt = d < 0 || d > dataEnd ? dataEnd : d;
      if (dataAt > pos) yield { start: pos, end: dataAt, kind: 'zero' };
      if (dataAt >= dataEnd) break;
      const h = Math.min(this.file.seekHole(dataAt), dataEnd);
      const stop = h <= dataAt ? dataEnd : h;
      yield { start: dataAt, end: stop, kind: 'data' };
      pos = stop;
    }
    if (end > Math.max(pos, dataEnd, start)) yield { start: Math.max(pos, dataEnd, start), end, kind: 'zero' };
  }
  override async read(buf: Buffer, offset: number): Promise<void> {
    if (offset < 0 || offset + buf.length > this.virtualSize) {
      throw new SparsifyError(`${this.path}: read at ${hex(offset)} (+${buf.length}) past end of disk (${hex(this.virtualSize)})`);
    }
    // A CHS-rounded size may run past the data area; that part reads as zero, never as the footer.
    const dataEnd = this.file.size - FOOTER_SIZE;
    const avail = Math.max(0, Math.min(buf.length, dataEnd - offset));
    if (avail > 0) await this.file.readExact(buf.subarray(0, avail), offset, 'vpc data');
    if (avail < buf.length) buf.fill(0, avail);
  }
}

interface DynInfo {
  bat: Uint32Array;
  blockSize: number;
  bitmapSize: number;
  differencing: boolean;
}

class DynamicVhd extends BlockMappedImage {
  private readonly bitmaps = new Map<number, Promise<Buffer>>();

  constructor(
    file: BlockFile,
    virtualSize: number,
    private readonly dyn: DynInfo,
    backing: DiskImage | undefined,
    subformat: string,
  ) {
    super({ format: 'vpc', file, virtualSize, blockSize: dyn.blockSize, backing, details: { subformat, block_size: dyn.blockSize } });
  }

  protected lookup(index: number): BlockState | Promise<BlockState> {
    const e = this.dyn.bat[index]!;
    if (e === NO_BLOCK) return { kind: 'unallocated' };
    const bitmapAt = e * 512;
    const host = bitmapAt + this.dyn.bitmapSize;
    const len = Math.min(this.blockSize, this.virtualSize - index * this.blockSize);
    if (host + len > this.file.size) {
      throw new CorruptError(`vpc: ${this.path}: BAT entry ${index} points to block at ${hex(bitmapAt)}, beyond end of file (size ${hex(this.file.size)})`);
    }
    // Dynamic disks: the block is all data, as qemu reads it. Differencing: the bitmap decides.
    if (!this.dyn.differencing) return { kind: 'data', host };
    return this.bitmap(index, bitmapAt).then((bm) => ({
      kind: 'data' as const,
      host,
      granule: 512,
      present: (i: number) => ((bm[i >> 3]! >> (7 - (i & 7))) & 1) === 1,
    }));
  }

  private bitmap(index: number, at: number): Promise<Buffer> {
    let p = this.bitmaps.get(index);
    if (!p) {
      if (this.bitmaps.size >= BITMAP_CACHE) this.bitmaps.delete(this.bitmaps.keys().next().value!);
      const b = Buffer.alloc(this.dyn.bitmapSize);
      p = this.file.readExact(b, at, 'vpc sector bitmap').then(() => b);
      p.catch(() => this.bitmaps.delete(index));
      this.bitmaps.set(index, p);
    }
    return p;
  }
}

/** Parent file candidates from the locators (relative first), then the Unicode parent name. */
function parentCandidates(dh: Buffer, file: BlockFile, headerAt: number): Promise<string[]> {
  const out: string[] = [];
  const jobs: Promise<void>[] = [];
  const byCode: Record<string, number> = { W2ru: 0, W2ku: 1, MacX: 2 };
  const found: { rank: number; name: string }[] = [];
  for (let i = 0; i < 8; i++) {
    const at = 576 + i * 24;
    const code = dh.toString('latin1', at, at + 4);
    const len = dh.readUInt32BE(at + 8);
    const off = u64be(dh, at + 16, `vpc: ${file.path}: parent locator ${i} offset`);
    if (!(code in byCode) || len === 0) continue;
    if (len > 65536 || off + len > file.size) {
      throw new CorruptError(`vpc: ${file.path}: parent locator ${i} in dynamic header at ${hex(headerAt)} points beyond end of file`);
    }
    const b = Buffer.alloc(len);
    jobs.push(
      file.readExact(b, off, 'vpc parent locator').then(() => {
        let name = code === 'MacX' ? b.toString('utf8') : b.toString('utf16le');
        name = name.replace(/\0+$/, '');
        if (code === 'MacX') name = decodeURI(name.replace(/^file:\/\//, ''));
        else name = name.replace(/\\/g, '/').replace(/^[A-Za-z]:/, '');
        found.push({ rank: byCode[code]!, name });
      }),
    );
  }
  return Promise.all(jobs).then(() => {
    found.sort((a, b) => a.rank - b.rank);
    for (const f of found) out.push(f.name);
    const uname = Buffer.from(dh.subarray(64, 64 + 512)).swap16().toString('utf16le').replace(/\0.*$/s, '');
    if (uname) out.push(uname);
    return out;
  });
}

async function openVhd(file: BlockFile, ctx: OpenContext): Promise<DiskImage> {
  if (file.size < FOOTER_SIZE) throw new CorruptError(`vpc: ${file.path}: file too small for a footer`);
  const tail = Buffer.alloc(FOOTER_SIZE);
  await file.readExact(tail, file.size - FOOTER_SIZE, 'vpc footer');
  let footer: VhdFooter;
  if (isFooter(tail)) {
    footer = parseFooter(tail, file.path, file.size - FOOTER_SIZE);
  } else {
    // A dynamic disk keeps a copy at 0; a damaged or missing tail footer can be read from there.
    const head = Buffer.alloc(FOOTER_SIZE);
    await file.readExact(head, 0, 'vpc footer copy');
    footer = parseFooter(head, file.path, 0);
  }
  const virtualSize = virtualSizeOf(footer);
  let img: DiskImage & { allocated: number };
  if (footer.diskType === TYPE_FIXED) {
    img = new FixedVhd({ format: 'vpc', file, virtualSize, blockSize: 1 << 30, details: { subformat: 'fixed' } });
  } else if (footer.diskType === TYPE_DYNAMIC || footer.diskType === TYPE_DIFFERENCING) {
    img = await openDynamic(file, footer, virtualSize, ctx);
  } else {
    throw new SparsifyError(`vpc: ${file.path}: unsupported disk type ${footer.diskType}`);
  }
  img.allocated = await file.allocatedBytes();
  return img;
}

async function openDynamic(file: BlockFile, footer: VhdFooter, virtualSize: number, ctx: OpenContext): Promise<DynamicVhd> {
  const at = footer.dataOffset;
  if (at < 0 || at + DYN_HEADER_SIZE > file.size) {
    throw new CorruptError(`vpc: ${file.path}: dynamic header at ${hex(at)} lies beyond end of file`);
  }
  const dh = Buffer.alloc(DYN_HEADER_SIZE);
  await file.readExact(dh, at, 'vpc dynamic header');
  if (dh.toString('latin1', 0, 8) !== 'cxsparse') throw new CorruptError(`vpc: ${file.path}: dynamic header at ${hex(at)} has bad cookie`);
  if (dh.readUInt32BE(36) !== vhdChecksum(dh, 36)) {
    throw new CorruptError(`vpc: ${file.path}: dynamic header at ${hex(at)} has bad checksum`);
  }
  const batAt = u64be(dh, 16, `vpc: ${file.path}: BAT offset`);
  const entries = dh.readUInt32BE(28);
  const blockSize = dh.readUInt32BE(32);
  if (blockSize < 512 || blockSize > 256 << 20 || (blockSize & (blockSize - 1)) !== 0) {
    throw new CorruptError(`vpc: ${file.path}: dynamic header at ${hex(at)}: block size ${blockSize} is invalid`);
  }
  if (entries * blockSize < virtualSize) {
    throw new CorruptError(`vpc: ${file.path}: BAT of ${entries} entries does not cover virtual size ${virtualSize}`);
  }
  if (batAt + entries * 4 > file.size) {
    throw new CorruptError(`vpc: ${file.path}: BAT at ${hex(batAt)} (${entries} entries) lies beyond end of file (size ${hex(file.size)})`);
  }
  const raw = Buffer.alloc(entries * 4);
  await file.readExact(raw, batAt, 'vpc BAT');
  const bat = new Uint32Array(entries);
  for (let i = 0; i < entries; i++) bat[i] = raw.readUInt32BE(i * 4);
  const differencing = footer.diskType === TYPE_DIFFERENCING;
  let backing: DiskImage | undefined;
  if (differencing) {
    const names = await parentCandidates(dh, file, at);
    const dir = dirname(file.path);
    const pick = names.find((n) => existsSync(resolve(dir, n)));
    if (!pick) {
      throw new SparsifyError(`vpc: ${file.path}: parent disk not found (tried: ${names.join(', ') || 'no locators'})`);
    }
    backing = await ctx.openBacking(pick, 'vpc', file.path);
  }
  const info: DynInfo = { bat, blockSize, bitmapSize: roundUp(Math.ceil(blockSize / 512 / 8), 512), differencing };
  return new DynamicVhd(file, virtualSize, info, backing, differencing ? 'differencing' : 'dynamic');
}

const createOptions: ReadonlyMap<string, string> = new Map([
  ['subformat', 'dynamic|fixed; default dynamic'],
  ['force_size', 'on|off: keep the exact size (on, default) or round up to CHS geometry like qemu-img (off)'],
]);

class VhdWriter implements ImageWriter {
  readonly format = 'vpc';
  private readonly writer: DirectBlockWriter;
  private next: number;

  constructor(
    private readonly out: OutputFile,
    private readonly footer: Buffer,
    private readonly bat: Uint32Array | undefined,
    private readonly batAt: number,
    size: number,
  ) {
    const bat2 = bat;
    this.next = bat ? roundUp(batAt + bat.length * 4, 512) : size;
    const bitmap = Buffer.alloc(512, 0xff);
    this.writer = bat2
      ? new DirectBlockWriter(
          'vpc', out, size, DEFAULT_BLOCK,
          (i) => (bat2[i] === NO_BLOCK ? undefined : bat2[i]! * 512 + 512),
          async (i) => {
            bat2[i] = this.next / 512;
            await out.write(bitmap, this.next);
            this.next += 512 + DEFAULT_BLOCK;
            return bat2[i]! * 512 + 512;
          },
        )
      : new DirectBlockWriter('vpc', out, size, 1 << 30, (i) => i * (1 << 30), async (i) => i * (1 << 30));
  }

  write(buf: Buffer, offset: number): Promise<void> {
    return this.writer.write(buf, offset);
  }

  async finish(): Promise<void> {
    if (this.bat) {
      const raw = Buffer.alloc(roundUp(this.bat.length * 4, 512), 0xff);
      for (let i = 0; i < this.bat.length; i++) raw.writeUInt32BE(this.bat[i]!, i * 4);
      await this.out.write(raw, this.batAt);
      await this.out.write(this.footer, 0);
    }
    await this.out.write(this.footer, this.next);
    await this.out.truncate(this.next + FOOTER_SIZE);
    await this.out.sync();
    await this.out.close();
  }

  async abort(): Promise<void> {
    await this.out.close();
  }
}

async function createVhdWriter(path: string, virtualSize: number, options: FormatOptions, ctx: WriterContext): Promise<ImageWriter> {
  checkOptions('vpc', options, createOptions);
  const sub = choiceOption('vpc', options, 'subformat', ['dynamic', 'fixed'] as const, 'dynamic');
  const force = boolOption('vpc', options, 'force_size', true);
  if (ctx.compress) throw new SparsifyError('vpc: --compress is not supported for vpc output');
  const plan = planSize(virtualSize, force);
  const fixed = sub === 'fixed';
  const footer = buildFooter({ ...plan, type: fixed ? TYPE_FIXED : TYPE_DYNAMIC, dataOffset: fixed ? -1 : FOOTER_SIZE, uuid: randomGuid() });
  const out = await OutputFile.create(path);
  if (fixed) {
    await out.truncate(plan.size);
    return new VhdWriter(out, footer, undefined, 0, plan.size);
  }
  const entries = Math.ceil(plan.size / DEFAULT_BLOCK);
  const batAt = FOOTER_SIZE + DYN_HEADER_SIZE;
  const dh = Buffer.alloc(DYN_HEADER_SIZE);
  dh.write('cxsparse', 0, 'latin1');
  dh.writeBigUInt64BE(0xffffffffffffffffn, 8);
  dh.writeBigUInt64BE(BigInt(batAt), 16);
  dh.writeUInt32BE(0x00010000, 24);
  dh.writeUInt32BE(entries, 28);
  dh.writeUInt32BE(DEFAULT_BLOCK, 32);
  dh.writeUInt32BE(vhdChecksum(dh, 36), 36);
  await out.write(dh, FOOTER_SIZE);
  return new VhdWriter(out, footer, new Uint32Array(entries).fill(NO_BLOCK), batAt, plan.size);
}

export const vpcDriver: FormatDriver = {
  name: 'vpc',
  probe: (head) => isFooter(head),
  open: openVhd,
  createOptions,
  createWriter: createVhdWriter,
};
