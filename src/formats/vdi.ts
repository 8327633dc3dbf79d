/**
 * VirtualBox VDI (little-endian). A 512-byte header (signature 0xBEDA107F at 0x40), a block map of one
 * u32 per block (0xFFFFFFFF: not allocated, 0xFFFFFFFE: discarded, reads as zero; else the index of
 * the block in the data area) and the data area of `block_size + block_extra` byte slots.
 */
import { randomBytes } from 'node:crypto';
import type { BlockFile } from '../io/file.js';
import { CorruptError, SparsifyError, hex } from '../io/errors.js';
import { BlockMappedImage, type BlockState } from './common/blockimage.js';
import { allZero, u64le } from './common/bytes.js';
import { DirectBlockWriter, OutputFile, boolOption, checkOptions, roundUp } from './common/blockwriter.js';
import type { DiskImage, FormatDriver, FormatOptions, ImageWriter, OpenContext, WriterContext } from './types.js';

const SIGNATURE = 0xbeda107f;
const VERSION_1_1 = 0x00010001;
const TYPE_DYNAMIC = 1;
const TYPE_FIXED = 2;
const UNALLOCATED = 0xffffffff;
const DISCARDED = 0xfffffffe;
const HEADER_TEXT = '<<< Oracle VM VirtualBox Disk Image >>>\n';
const DEFAULT_BLOCK = 1 << 20;

interface VdiHeader {
  type: number;
  offsetBmap: number;
  offsetData: number;
  diskSize: number;
  blockSize: number;
  blockExtra: number;
  blocks: number;
}

function parseHeader(h: Buffer, path: string, fileSize: number): VdiHeader {
  if (h.readUInt32LE(0x40) !== SIGNATURE) throw new CorruptError(`vdi: ${path}: bad signature at 0x40`);
  const version = h.readUInt32LE(0x44);
  if (version >>> 16 !== 1) throw new SparsifyError(`vdi: ${path}: unsupported version ${hex(version)}`);
  const type = h.readUInt32LE(0x4c);
  if (type !== TYPE_DYNAMIC && type !== TYPE_FIXED) {
    throw new SparsifyError(`vdi: ${path}: image type ${type} (undo/differencing) is not supported`);
  }
  if (!allZero(h.subarray(0x1b8, 0x1c8))) {
    throw new SparsifyError(`vdi: ${path}: differencing VDI images (parent UUID set) are not supported`);
  }
  const hdr: VdiHeader = {
    type,
    offsetBmap: h.readUInt32LE(0x154),
    offsetData: h.readUInt32LE(0x158),
    diskSize: u64le(h, 0x170, `vdi: ${path}: disk size at 0x170`),
    blockSize: h.readUInt32LE(0x178),
    blockExtra: h.readUInt32LE(0x17c),
    blocks: h.readUInt32LE(0x180),
  };
  const bs = hdr.blockSize;
  if (bs < 512 || bs > 1 << 28 || (bs & (bs - 1)) !== 0) {
    throw new CorruptError(`vdi: ${path}: block size ${bs} at 0x178 is not a power of two in 512..256M`);
  }
  if (hdr.blockExtra % 512 !== 0 || hdr.blockExtra > 1 << 20) {
    throw new CorruptError(`vdi: ${path}: block_extra ${hdr.blockExtra} at 0x17c is invalid`);
  }
  if (hdr.blocks * bs < hdr.diskSize) {
    throw new CorruptError(`vdi: ${path}: ${hdr.blocks} blocks of ${bs} bytes cannot hold disk size ${hdr.diskSize}`);
  }
  if (hdr.offsetBmap < 0x200 || hdr.offsetBmap + hdr.blocks * 4 > fileSize) {
    throw new CorruptError(`vdi: ${path}: block map at ${hex(hdr.offsetBmap)} (${hdr.blocks} entries) lies beyond end of file (size ${hex(fileSize)})`);
  }
  if (hdr.offsetData < 0x200) throw new CorruptError(`vdi: ${path}: data offset ${hex(hdr.offsetData)} at 0x158 overlaps the header`);
  return hdr;
}

class VdiImage extends BlockMappedImage {
  constructor(
    file: BlockFile,
    private readonly hdr: VdiHeader,
    private readonly bmap: Uint32Array,
  ) {
    super({
      format: 'vdi',
      file,
      virtualSize: hdr.diskSize,
      blockSize: hdr.blockSize,
      details: { subformat: hdr.type === TYPE_FIXED ? 'static' : 'dynamic', block_size: hdr.blockSize },
    });
  }

  protected lookup(index: number): BlockState {
    const e = this.bmap[index]!;
    if (e === UNALLOCATED) return { kind: 'unallocated' };
    if (e === DISCARDED) return { kind: 'zero' };
    return { kind: 'data', host: this.hdr.offsetData + e * (this.hdr.blockSize + this.hdr.blockExtra) + this.hdr.blockExtra };
  }
}

async function openVdi(file: BlockFile, _ctx: OpenContext): Promise<DiskImage> {
  const h = Buffer.alloc(512);
  await file.readExact(h, 0, 'vdi header');
  const hdr = parseHeader(h, file.path, file.size);
  const raw = Buffer.alloc(hdr.blocks * 4);
  await file.readExact(raw, hdr.offsetBmap, 'vdi block map');
  const bmap = new Uint32Array(hdr.blocks);
  const slot = hdr.blockSize + hdr.blockExtra;
  const needed = Math.ceil(hdr.diskSize / hdr.blockSize);
  for (let i = 0; i < hdr.blocks; i++) {
    const e = raw.readUInt32LE(i * 4);
    bmap[i] = e;
    if (e >= DISCARDED || i >= needed) continue;
    // The last block may be partial when the disk size is not a block multiple.
    const len = Math.min(hdr.blockSize, hdr.diskSize - i * hdr.blockSize);
    const host = hdr.offsetData + e * slot + hdr.blockExtra;
    if (host + len > file.size) {
      throw new CorruptError(
        `vdi: ${file.path}: block map entry ${i} at ${hex(hdr.offsetBmap + i * 4)} points to block ${e} at ${hex(host)}, beyond end of file (size ${hex(file.size)})`,
      );
    }
  }
  const img = new VdiImage(file, hdr, bmap);
  img.allocated = await file.allocatedBytes();
  return img;
}

const createOptions: ReadonlyMap<string, string> = new Map([
  ['static', 'on|off: preallocate every block (fixed image); default off'],
]);

class VdiWriter implements ImageWriter {
  readonly format = 'vdi';
  private allocatedBlocks = 0;
  private readonly writer: DirectBlockWriter;

  constructor(
    private readonly out: OutputFile,
    private readonly size: number,
    private readonly fixed: boolean,
    private readonly bmap: Uint32Array,
    private readonly offsetData: number,
  ) {
    if (fixed) this.allocatedBlocks = bmap.length;
    this.writer = new DirectBlockWriter(
      'vdi',
      out,
      size,
      DEFAULT_BLOCK,
      (i) => (bmap[i] === UNALLOCATED ? undefined : offsetData + bmap[i]! * DEFAULT_BLOCK),
      async (i) => {
        bmap[i] = this.allocatedBlocks++;
        const host = offsetData + bmap[i]! * DEFAULT_BLOCK;
        // Extend the file so the new block exists whole (reads as zero where not written).
        await out.truncate(host + DEFAULT_BLOCK);
        return host;
      },
    );
  }

  write(buf: Buffer, offset: number): Promise<void> {
    return this.writer.write(buf, offset);
  }

  async finish(): Promise<void> {
    const h = Buffer.alloc(0x200);
    h.write(HEADER_TEXT, 0, 'latin1');
    h.writeUInt32LE(SIGNATURE, 0x40);
    h.writeUInt32LE(VERSION_1_1, 0x44);
    h.writeUInt32LE(0x180, 0x48);
    h.writeUInt32LE(this.fixed ? TYPE_FIXED : TYPE_DYNAMIC, 0x4c);
    h.writeUInt32LE(0x200, 0x154);
    h.writeUInt32LE(this.offsetData, 0x158);
    h.writeUInt32LE(512, 0x168);
    h.writeBigUInt64LE(BigInt(this.size), 0x170);
    h.writeUInt32LE(DEFAULT_BLOCK, 0x178);
    h.writeUInt32LE(this.bmap.length, 0x180);
    h.writeUInt32LE(this.allocatedBlocks, 0x184);
    randomBytes(16).copy(h, 0x188); // image UUID
    randomBytes(16).copy(h, 0x198); // last snapshot UUID
    const map = Buffer.alloc(this.offsetData - 0x200);
    for (let i = 0; i < this.bmap.length; i++) map.writeUInt32LE(this.bmap[i]!, i * 4);
    await this.out.write(map, 0x200);
    await this.out.write(h, 0);
    await this.out.truncate(this.offsetData + this.allocatedBlocks * DEFAULT_BLOCK);
    await this.out.sync();
    await this.out.close();
  }

  async abort(): Promise<void> {
    await this.out.close();
  }
}

async function createVdiWriter(path: string, virtualSize: number, options: FormatOptions, ctx: WriterContext): Promise<ImageWriter> {
  checkOptions('vdi', options, createOptions);
  const fixed = boolOption('vdi', options, 'static', false);
  if (ctx.compress) throw new SparsifyError('vdi: --compress is not supported for vdi output');
  const size = roundUp(virtualSize, 512);
  const blocks = Math.ceil(size / DEFAULT_BLOCK);
  if (blocks > 0x3fffffff) throw new SparsifyError(`vdi: virtual size ${size} is too large`);
  const offsetData = 0x200 + roundUp(Math.max(blocks * 4, 1), 512);
  const bmap = new Uint32Array(blocks);
  if (fixed) for (let i = 0; i < blocks; i++) bmap[i] = i;
  else bmap.fill(UNALLOCATED);
  const out = await OutputFile.create(path);
  if (fixed) await out.truncate(offsetData + blocks * DEFAULT_BLOCK);
  return new VdiWriter(out, size, fixed, bmap, offsetData);
}

export const vdiDriver: FormatDriver = {
  name: 'vdi',
  probe: (head) => head.length >= 0x48 && head.readUInt32LE(0x40) === SIGNATURE,
  open: openVdi,
  createOptions,
  createWriter: createVdiWriter,
};
