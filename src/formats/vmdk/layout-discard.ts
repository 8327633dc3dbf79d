/**
 * The map of a monolithicSparse VMDK as in-place mode sees it (VMware Virtual Disk Format 1.1,
 * qemu block/vmdk.c). One sparse extent, its text descriptor embedded after the header. The grain
 * directory (GD) holds the host sector of each grain table (GT); a GT holds numGTEsPerGT u32
 * entries, each the host sector of one grain: 0 unallocated (reads the parent disk, or zero
 * without one), 1 a zeroed grain when header flag bit 2 is set, else the grain's data. With flag
 * bit 1 a redundant GD (RGD) points at a second copy of every table (RGT), which qemu and VMware
 * write in step with the GT. qemu lays out header, descriptor, RGD, RGTs, GD, GTs, rounded up to
 * a grain (`overHead`), and appends new grains at the end of the file; it reads only the GT.
 *
 * Safety: everything is read and checked before anything is written. Every table and every grain
 * lies inside the file, no grain lies over metadata or over another grain, no table over another
 * structure; otherwise a CorruptError names the structure and its offset. The GT is the truth:
 * an RGT entry that differs (a run a power cut stopped between the two writes) is rewritten from
 * it. Refused, with copy mode named: streamOptimized and compressed grains, version 3 (changed
 * block tracking, which qemu also opens read-only), and anything but a single sparse extent.
 */
import type { BlockFile } from '../../io/file.js';
import { CorruptError, SparsifyError, hex } from '../../io/errors.js';
import { Extents } from '../../io/extents.js';
import { parseDescriptor } from './descriptor.js';
import { FLAG_COMPRESSED, FLAG_MARKERS, FLAG_RGD, FLAG_ZERO_GRAIN, SECTOR, isSparseHeader, parseSparseHeader, type SparseHeader } from './header.js';
import { GrainSlots } from './slots-discard.js';
import { writeU32Entries } from '../common/runs.js';

/** The GT value of a zeroed grain (with FLAG_ZERO_GRAIN). */
export const GTE_ZERO = 1;
/** Bytes of tables read at once while loading. */
const READ_CHUNK = 1 << 20;
const MAX_DESCRIPTOR = 1 << 20;

export interface GrainTableSet {
  /** Host sector of each table (0: none). */
  dir: Uint32Array;
  name: 'grain table' | 'redundant grain table';
}

export class VmdkLayout {
  readonly grainBytes: number;
  readonly grainSectors: number;
  readonly perTable: number;
  /** Bytes of one table on disk (whole sectors). */
  readonly tableBytes: number;
  /** Where grains may start: the end of the metadata area (`overHead`). */
  readonly floor: number;
  readonly zeroGrain: boolean;
  /** Tables whose RGT differs from the GT, to be rewritten from it. */
  readonly staleRedundant = new Set<number>();

  private constructor(
    readonly file: BlockFile,
    readonly virtualSize: number,
    readonly h: SparseHeader,
    readonly gt: GrainTableSet,
    readonly rgt: GrainTableSet | undefined,
    /** Header, descriptor, directories and tables: host bytes that never move and are never released. */
    readonly metadata: Extents,
    readonly slots: GrainSlots,
  ) {
    this.grainSectors = h.grainSize;
    this.grainBytes = h.grainSize * SECTOR;
    this.perTable = h.numGTEsPerGT;
    this.tableBytes = Math.ceil((h.numGTEsPerGT * 4) / SECTOR) * SECTOR;
    this.floor = Math.max(h.overHead * SECTOR, SECTOR);
    this.zeroGrain = (h.flags & FLAG_ZERO_GRAIN) !== 0;
  }

  get path(): string {
    return this.file.path;
  }

  /** Guest bytes grain `g` covers (the last grain may be short). */
  grainLength(g: number): number {
    return Math.max(0, Math.min(this.grainBytes, this.virtualSize - g * this.grainBytes));
  }

  /** Refuse what in-place mode cannot change, then read and check every table. */
  static async load(file: BlockFile, virtualSize: number, kind: { subformat: string; extents: number }): Promise<VmdkLayout> {
    const p = file.path;
    const copy = `use copy mode: sparsify ${p} OUTPUT`;
    const only = `--in-place supports only monolithicSparse VMDK images (one sparse extent, its descriptor inside); ${copy}`;
    const head = Buffer.alloc(Math.min(SECTOR, file.size));
    await file.readExact(head, 0, 'vmdk header');
    if (!isSparseHeader(head) || kind.extents !== 1) {
      throw new SparsifyError(`${p}: a ${kind.subformat || 'descriptor-file'} VMDK (a descriptor naming ${kind.extents} extent file(s)): ${only}`);
    }
    const h = parseSparseHeader(head, p, 0);
    if (h.flags & (FLAG_COMPRESSED | FLAG_MARKERS) || h.gdOffset < 0 || h.compressAlgorithm !== 0) {
      throw new SparsifyError(`${p}: streamOptimized VMDK images (compressed grains, written once in order) cannot be changed in place; ${copy}`);
    }
    if (h.version === 3) throw new SparsifyError(`${p}: VMDK version 3 (changed block tracking) is opened read-only, as qemu does; ${copy}`);
    const desc = await readDescriptor(file, h);
    if (desc.createType !== 'monolithicSparse' || desc.extents.length > 1 || desc.extents.some((x) => x.type !== 'SPARSE')) {
      const what = desc.createType ? `a ${desc.createType} VMDK` : 'a sparse extent without a descriptor (one piece of a split disk?)';
      throw new SparsifyError(`${p}: ${what}: ${only}`);
    }
    if (h.capacity * SECTOR !== virtualSize) throw new CorruptError(`vmdk: ${p}: header capacity ${h.capacity} sectors does not match the disk size ${virtualSize}`);
    if (h.overHead * SECTOR > file.size) {
      throw new CorruptError(`vmdk: ${p}: file truncated: the metadata area (overHead ${h.overHead} sectors) ends at ${hex(h.overHead * SECTOR)}, the file at ${hex(file.size)}`);
    }

    const grains = Math.ceil(h.capacity / h.grainSize);
    const tables = Math.ceil(grains / h.numGTEsPerGT);
    if (tables * h.numGTEsPerGT >= 0xffffffff) throw new SparsifyError(`${p}: ${grains} grains are too many for --in-place mode; ${copy}`);
    const pieces = new MetadataPieces(p, file.size);
    pieces.add(0, SECTOR, 'header');
    if (h.descriptorOffset > 0 && h.descriptorSize > 0) pieces.add(h.descriptorOffset * SECTOR, h.descriptorSize * SECTOR, 'embedded descriptor');
    const gt: GrainTableSet = { dir: await readDirectory(file, h.gdOffset, tables, 'grain directory', pieces), name: 'grain table' };
    const useRgd = (h.flags & FLAG_RGD) !== 0 && h.rgdOffset !== 0;
    const rgt: GrainTableSet | undefined = useRgd
      ? { dir: await readDirectory(file, h.rgdOffset, tables, 'redundant grain directory', pieces), name: 'redundant grain table' }
      : undefined;
    const tableBytes = Math.ceil((h.numGTEsPerGT * 4) / SECTOR) * SECTOR;
    for (let t = 0; t < tables; t++) {
      const at = gt.dir[t]!;
      const rat = rgt?.dir[t];
      if (at !== 0) pieces.add(at * SECTOR, tableBytes, `grain table ${t}`);
      if (rat !== undefined && rat !== 0) pieces.add(rat * SECTOR, tableBytes, `redundant grain table ${t}`);
      if (rat !== undefined && (rat === 0) !== (at === 0)) {
        throw new CorruptError(`vmdk: ${p}: grain directory entry ${t} is ${hex(at * SECTOR)} but redundant grain directory entry ${t} is ${hex(rat * SECTOR)}: only one of them has a table`);
      }
    }
    const metadata = pieces.check();
    const layout = new VmdkLayout(file, virtualSize, h, gt, rgt, metadata, new GrainSlots());
    await layout.loadTables();
    return layout;
  }

  /** Read every GT (and RGT), check every entry, index the grains, note RGTs out of step. */
  private async loadTables(): Promise<void> {
    const p = this.path;
    const tables = this.gt.dir.length;
    const perRead = Math.max(1, Math.floor(READ_CHUNK / this.tableBytes));
    for (let t = 0; t < tables; t += perRead) {
      const n = Math.min(perRead, tables - t);
      const gts = await this.readTables(this.gt, t, n);
      const rgts = this.rgt ? await this.readTables(this.rgt, t, n) : undefined;
      for (let j = 0; j < n; j++) {
        const table = gts[j];
        if (!table) continue;
        this.checkTable(t + j, table);
        if (rgts && !rgts[j]!.equals(table)) this.staleRedundant.add(t + j);
      }
    }
    const o = this.slots.overlap(this.grainSectors);
    if (o) {
      throw new CorruptError(
        `vmdk: ${p}: the grains of guest offsets ${hex(this.guestOffset(o.a))} and ${hex(this.guestOffset(o.b))} overlap at host offset ${hex(o.sector * SECTOR)}; repair the image or use copy mode`,
      );
    }
    // No grain over metadata: walk both sorted lists together.
    const meta = this.metadata.toArray();
    let m = 0;
    for (const [, e, s] of this.slots.ascending()) {
      const at = s * SECTOR;
      while (m < meta.length && meta[m]!.end <= at) m++;
      if (m < meta.length && meta[m]!.start < at + this.grainBytes) {
        throw new CorruptError(`vmdk: ${p}: grain of guest offset ${hex(this.guestOffset(e))} at host offset ${hex(at)} lies over the image's metadata (${hex(meta[m]!.start)}..${hex(meta[m]!.end)})`);
      }
    }
  }

  private checkTable(t: number, table: Buffer): void {
    const where = (k: number) => `grain table ${t} at ${hex(this.gt.dir[t]! * SECTOR)}, entry ${k} (guest offset ${hex((t * this.perTable + k) * this.grainBytes)})`;
    for (let k = 0; k < this.perTable; k++) {
      const s = table.readUInt32LE(k * 4);
      if (s === 0 || (s === GTE_ZERO && this.zeroGrain)) continue;
      const g = t * this.perTable + k;
      const at = s * SECTOR;
      if (at < this.floor) {
        throw new CorruptError(`vmdk: ${this.path}: ${where(k)} points to ${hex(at)}, inside the metadata area (which ends at ${hex(this.floor)})`);
      }
      // A grain must hold its guest bytes in the file (the last one may be short; past the disk, at least a sector).
      if (at + Math.max(SECTOR, this.grainLength(g)) > this.file.size) {
        throw new CorruptError(`vmdk: ${this.path}: ${where(k)} points to a grain at ${hex(at)}, beyond end of file (size ${hex(this.file.size)})`);
      }
      this.slots.add(g, s);
    }
  }

  guestOffset(entry: number): number {
    return entry * this.grainBytes;
  }

  async readTable(set: GrainTableSet, t: number): Promise<Buffer> {
    const b = Buffer.alloc(this.perTable * 4);
    await this.file.readExact(b, set.dir[t]! * SECTOR, `vmdk ${set.name} ${t}`);
    return b;
  }

  /** Tables t..t+n-1 of a set (undefined where the directory has none); neighbours on disk are read together. */
  private async readTables(set: GrainTableSet, t: number, n: number): Promise<Array<Buffer | undefined>> {
    const out: Array<Buffer | undefined> = [];
    const step = this.tableBytes / SECTOR;
    let j = 0;
    while (j < n) {
      const first = set.dir[t + j]!;
      if (first === 0) {
        out.push(undefined);
        j++;
        continue;
      }
      let run = 1;
      while (j + run < n && set.dir[t + j + run] === first + run * step) run++;
      const raw = Buffer.alloc(run * this.tableBytes);
      await this.file.readExact(raw, first * SECTOR, `vmdk ${set.name}s`);
      for (let r = 0; r < run; r++) out.push(raw.subarray(r * this.tableBytes, r * this.tableBytes + this.perTable * 4));
      j += run;
    }
    return out;
  }

  /** The GT of table `t` as numbers (the table must exist). */
  async readEntries(t: number): Promise<Uint32Array> {
    const b = await this.readTable(this.gt, t);
    const out = new Uint32Array(this.perTable);
    for (let k = 0; k < this.perTable; k++) out[k] = b.readUInt32LE(k * 4);
    return out;
  }

  /** The RGT of table `t` as numbers, or undefined without redundant tables. */
  async readRedundantEntries(t: number): Promise<Uint32Array | undefined> {
    if (!this.rgt) return undefined;
    const b = await this.readTable(this.rgt, t);
    const out = new Uint32Array(this.perTable);
    for (let k = 0; k < this.perTable; k++) out[k] = b.readUInt32LE(k * 4);
    return out;
  }

  /**
   * Write entries `ks` (ascending) of table `t` with `values[k]`, in GT or RGT, one write per run
   * of neighbouring entries. The caller syncs.
   */
  async writeEntries(set: GrainTableSet, t: number, ks: readonly number[], values: (k: number) => number): Promise<void> {
    await writeU32Entries(this.file, set.dir[t]! * SECTOR, ks, values, 'le');
  }

  /** Point grain table entries (flat indices) at new values, in the GT and the RGT. The caller syncs. */
  async setEntries(changes: ReadonlyMap<number, number>): Promise<void> {
    const byTable = new Map<number, number[]>();
    for (const e of [...changes.keys()].sort((a, b) => a - b)) {
      const t = Math.floor(e / this.perTable);
      let ks = byTable.get(t);
      if (!ks) byTable.set(t, (ks = []));
      ks.push(e - t * this.perTable);
    }
    for (const [t, ks] of byTable) {
      const value = (k: number) => changes.get(t * this.perTable + k)!;
      await this.writeEntries(this.gt, t, ks, value);
      if (this.rgt) await this.writeEntries(this.rgt, t, ks, value);
    }
  }
}

async function readDescriptor(file: BlockFile, h: SparseHeader): Promise<ReturnType<typeof parseDescriptor>> {
  if (h.descriptorOffset === 0 || h.descriptorSize === 0) return parseDescriptor('', file.path);
  const at = h.descriptorOffset * SECTOR;
  const len = Math.min(h.descriptorSize * SECTOR, MAX_DESCRIPTOR);
  if (at + len > file.size) throw new CorruptError(`vmdk: ${file.path}: embedded descriptor at ${hex(at)} lies beyond end of file`);
  const b = Buffer.alloc(len);
  await file.readExact(b, at, 'vmdk descriptor');
  return parseDescriptor(b.toString('latin1').replace(/\0[\s\S]*$/, ''), file.path);
}

async function readDirectory(file: BlockFile, sector: number, entries: number, name: string, pieces: MetadataPieces): Promise<Uint32Array> {
  const at = sector * SECTOR;
  const len = entries * 4;
  if (sector === 0 || at + len > file.size) {
    throw new CorruptError(`vmdk: ${file.path}: ${name} at ${hex(at)} (${entries} entries) lies beyond end of file (size ${hex(file.size)})`);
  }
  pieces.add(at, Math.ceil(len / SECTOR) * SECTOR, name);
  const raw = Buffer.alloc(len);
  await file.readExact(raw, at, `vmdk ${name}`);
  const out = new Uint32Array(entries);
  for (let i = 0; i < entries; i++) out[i] = raw.readUInt32LE(i * 4);
  return out;
}

/** The metadata structures, checked to lie inside the file and apart from each other. */
class MetadataPieces {
  private readonly list: Array<{ start: number; end: number; name: string }> = [];
  constructor(
    private readonly path: string,
    private readonly fileSize: number,
  ) {}

  add(start: number, length: number, name: string): void {
    if (start + length > this.fileSize) {
      throw new CorruptError(`vmdk: ${this.path}: ${name} at ${hex(start)} lies beyond end of file (size ${hex(this.fileSize)})`);
    }
    this.list.push({ start, end: start + length, name });
  }

  check(): Extents {
    const sorted = [...this.list].sort((a, b) => a.start - b.start);
    for (let i = 1; i < sorted.length; i++) {
      const a = sorted[i - 1]!;
      const b = sorted[i]!;
      if (b.start < a.end) throw new CorruptError(`vmdk: ${this.path}: ${b.name} at ${hex(b.start)} overlaps ${a.name} at ${hex(a.start)}`);
    }
    return new Extents(sorted);
  }
}
