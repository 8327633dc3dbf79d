/**
 * NTFS free space: the $Bitmap file (MFT record 6) has one bit per cluster, set when in use.
 *
 * Trust rules: a dirty volume ($Volume's VOLUME_INFORMATION flag 0x0001) or a hibernated one
 * (Windows hibernation or fast startup: /hiberfil.sys starting with "hibr" or "wake") may hold
 * allocations the on-disk bitmap does not show yet, so both are kept whole. The boot sector, the
 * MFT, its mirror and the bitmap itself must read as in use, or the bitmap is not believed. The
 * backup boot sector lies past the last counted cluster and so is never reported free.
 */
import { CorruptError, hex } from '../io/errors.js';
import { Extents, ExtentsBuilder } from '../io/extents.js';
import type { Volume } from '../layout/volume.js';
import type { FsAnalysis, FsReader } from './types.js';
import { findInDirectory } from './ntfs-index.js';
import { ATTR, RECORD_IN_USE, applyFixups, parseMftRecord, parseNtfsBoot, readRuns, type Attribute, type MftRecord, type NtfsBoot, type Run } from './ntfs-records.js';

const MFT = { mft: 0, mftMirr: 1, volume: 3, root: 5, bitmap: 6 } as const;
const VOLUME_DIRTY = 0x0001;
const ATTR_VOLUME_NAME = 0x60;
const BITMAP_CHUNK = 1 << 20;

class NtfsVolume {
  private mftRuns: Run[] = [];

  constructor(
    readonly volume: Volume,
    readonly boot: NtfsBoot,
  ) {}

  /** Read $MFT's own record at the boot sector's MFT cluster to learn where the MFT lies. */
  async init(): Promise<MftRecord> {
    const b = this.boot;
    const rec = await this.volume.readAt(b.mftLcn * b.clusterSize, b.mftRecordSize);
    applyFixups(rec, 'FILE', `MFT record 0 at ${hex(b.mftLcn * b.clusterSize)}`);
    const mft = parseMftRecord(rec, 0, b.clusterCount);
    const data = unnamedData(mft);
    if (!data?.runs || data.startVcn !== 0 || data.runs[0]?.lcn !== b.mftLcn) {
      throw new CorruptError(`ntfs: MFT record 0 at ${hex(b.mftLcn * b.clusterSize)} does not describe the MFT at cluster ${b.mftLcn}`);
    }
    this.mftRuns = data.runs;
    // A fragmented MFT continues its run list in extension records (listed in $ATTRIBUTE_LIST);
    // they are read in VCN order, each through the runs known so far.
    this.mftRuns = (await this.dataRuns(mft)).runs;
    return mft;
  }

  /** The full run list of a record's unnamed $DATA, gathered from extension records if needed. */
  async dataRuns(rec: MftRecord): Promise<{ runs: Run[]; dataSize: number }> {
    const where = `MFT record ${rec.number} $DATA`;
    const base = unnamedData(rec);
    if (!base?.runs) throw new CorruptError(`ntfs: ${where} is missing or resident`);
    const runs = [...base.runs];
    const list = rec.attributes.find((a) => a.type === ATTR.attributeList);
    if (list) {
      const v = await this.head(list, 1 << 20, `MFT record ${rec.number} $ATTRIBUTE_LIST`);
      for (let pos = 0, n = 0; pos + 26 <= v.length; n++) {
        const len = v.readUInt16LE(pos + 4);
        if (len < 26 || pos + len > v.length || n > 65536) throw new CorruptError(`ntfs: MFT record ${rec.number} $ATTRIBUTE_LIST has a bad entry at byte ${pos}`);
        const ref = Number(v.readBigUInt64LE(pos + 16) & 0xffffffffffffn);
        const startVcn = Number(v.readBigUInt64LE(pos + 8));
        if (v.readUInt32LE(pos) === ATTR.data && v[pos + 6] === 0 && ref !== rec.number && startVcn > 0) {
          const ext = await this.record(ref);
          const a = ext.attributes.find((x) => x.type === ATTR.data && x.name === '' && x.startVcn === startVcn);
          if (!a?.runs) throw new CorruptError(`ntfs: ${where} extent at VCN ${startVcn} is missing from MFT record ${ref}`);
          runs.push(...a.runs);
          if (rec.number === 0) this.mftRuns = [...runs].sort((x, y) => x.vcn - y.vcn);
        }
        pos += len;
      }
    }
    runs.sort((x, y) => x.vcn - y.vcn);
    for (let i = 1; i < runs.length; i++) {
      if (runs[i]!.vcn !== runs[i - 1]!.vcn + runs[i - 1]!.length) throw new CorruptError(`ntfs: ${where} runs are not contiguous at VCN ${runs[i]!.vcn}`);
    }
    return { runs, dataSize: base.dataSize ?? 0 };
  }

  get mftExtents(): Run[] {
    return this.mftRuns;
  }

  async record(n: number): Promise<MftRecord> {
    const where = `MFT record ${n}`;
    const rec = await readRuns(this.volume, this.mftRuns, this.boot.clusterSize, n * this.boot.mftRecordSize, this.boot.mftRecordSize, where);
    applyFixups(rec, 'FILE', where);
    const r = parseMftRecord(rec, n, this.boot.clusterCount);
    if (!(r.flags & RECORD_IN_USE)) throw new CorruptError(`ntfs: ${where} is not in use`);
    return r;
  }

  /** First `length` bytes of an attribute's value, resident or not. */
  async head(a: Attribute, length: number, where: string): Promise<Buffer> {
    if (a.value) return a.value.subarray(0, length);
    const n = Math.min(length, a.dataSize ?? 0);
    return readRuns(this.volume, a.runs ?? [], this.boot.clusterSize, 0, n, where);
  }
}

function unnamedData(r: MftRecord): Attribute | undefined {
  return r.attributes.find((a) => a.type === ATTR.data && a.name === '' && (!a.nonResident || a.startVcn === 0));
}

/** True when /hiberfil.sys exists and starts with a hibernation signature. */
async function hibernated(nv: NtfsVolume): Promise<string | undefined> {
  const root = await nv.record(MFT.root);
  const hits = await findInDirectory(nv.volume, nv.boot, root, 'hiberfil.sys');
  for (const hit of hits) {
    const file = await nv.record(hit.record);
    const data = unnamedData(file);
    if (!data) throw new CorruptError(`ntfs: ${hit.name} (MFT record ${hit.record}) has no data attribute`);
    const head = (await nv.head(data, 4, `${hit.name} data`)).toString('latin1').toLowerCase();
    if (head === 'hibr' || head === 'wake') return head;
  }
  return undefined;
}

function runExtents(runs: Run[], clusterSize: number): Extents {
  return new Extents(runs.filter((r) => r.lcn >= 0).map((r) => ({ start: r.lcn * clusterSize, end: (r.lcn + r.length) * clusterSize })));
}

export const ntfsReader: FsReader = {
  name: 'ntfs',

  async probe(volume: Volume): Promise<boolean> {
    try {
      if (volume.size < 512) return false;
      parseNtfsBoot(await volume.readAt(0, 512), volume.size);
      return true;
    } catch {
      return false;
    }
  },

  async analyze(volume: Volume): Promise<FsAnalysis> {
    if (volume.size < 512) throw new CorruptError(`ntfs: volume of ${volume.size} bytes is too small for a boot sector`);
    const boot = parseNtfsBoot(await volume.readAt(0, 512), volume.size);
    const cs = boot.clusterSize;
    const size = boot.clusterCount * cs;
    const warnings: string[] = [];
    const result: FsAnalysis = {
      type: 'ntfs',
      uuid: boot.serial.toString(16).toUpperCase().padStart(16, '0'),
      blockSize: cs,
      size: Math.min(volume.size, (boot.totalSectors + 1) * boot.bytesPerSector),
      usedBytes: size,
      freeBytes: 0,
      free: new Extents(),
      trusted: false,
      warnings,
      details: { clusters: boot.clusterCount, mftRecordSize: boot.mftRecordSize },
    };
    result.usedBytes = result.size;
    if ((boot.totalSectors + 1) * boot.bytesPerSector > volume.size) {
      warnings.push('the backup boot sector lies past the end of the volume');
    }

    const nv = new NtfsVolume(volume, boot);
    await nv.init();

    // ntfs-3g refuses a volume whose mirror disagrees with the MFT; so do we.
    const mirrorBytes = 4 * boot.mftRecordSize;
    const mirrRecord = await nv.record(MFT.mftMirr);
    const mirrRuns = (await nv.dataRuns(mirrRecord)).runs;
    if (mirrRuns[0]?.lcn !== boot.mftMirrLcn) {
      throw new CorruptError(`ntfs: $MFTMirr (MFT record 1) does not describe the mirror at cluster ${boot.mftMirrLcn}`);
    }
    const mirror = await readRuns(volume, mirrRuns, cs, 0, mirrorBytes, '$MFTMirr');
    if (!mirror.equals(await readRuns(volume, nv.mftExtents, cs, 0, mirrorBytes, '$MFT'))) {
      warnings.push('$MFTMirr does not match $MFT (run chkdsk in Windows); kept whole');
      return result;
    }

    const vol = await nv.record(MFT.volume);
    const info = vol.attributes.find((a) => a.type === ATTR.volumeInformation);
    if (!info?.value || info.value.length < 12) throw new CorruptError('ntfs: $Volume (MFT record 3) has no VOLUME_INFORMATION');
    const major = info.value[8]!;
    const minor = info.value[9]!;
    const volFlags = info.value.readUInt16LE(10);
    result.details!.version = `${major}.${minor}`;
    result.details!.volumeFlags = hex(volFlags);
    const name = vol.attributes.find((a) => a.type === ATTR_VOLUME_NAME);
    if (name?.value?.length) result.label = name.value.toString('utf16le');
    if (major < 1 || major > 3) {
      warnings.push(`unknown NTFS version ${major}.${minor}; kept whole`);
      return result;
    }
    if (volFlags & VOLUME_DIRTY) {
      warnings.push('NTFS volume is dirty (not shut down cleanly; run chkdsk in Windows); kept whole');
      return result;
    }
    try {
      const sig = await hibernated(nv);
      if (sig) {
        result.details!.hibernated = true;
        warnings.push(`NTFS volume is hibernated (hiberfil.sys starts with "${sig}": Windows hibernation or fast startup); kept whole`);
        return result;
      }
    } catch (e) {
      warnings.push(`could not check hiberfil.sys in the root directory (${(e as Error).message}); kept whole`);
      return result;
    }

    // $Bitmap: bit n of byte n/8 is cluster n.
    const bm = await nv.record(MFT.bitmap);
    const data = await nv.dataRuns(bm);
    const bytes = Math.ceil(boot.clusterCount / 8);
    if (data.dataSize < bytes) {
      throw new CorruptError(`ntfs: $Bitmap (MFT record 6) has no non-resident data covering ${bytes} bytes`);
    }
    const b = new ExtentsBuilder();
    for (let pos = 0; pos < bytes; pos += BITMAP_CHUNK) {
      const chunk = await readRuns(volume, data.runs, cs, pos, Math.min(BITMAP_CHUNK, bytes - pos), '$Bitmap');
      for (let i = 0; i < chunk.length; i++) {
        const byte = chunk[i]!;
        if (byte === 0xff) continue;
        for (let bit = 0; bit < 8; bit++) {
          const c = (pos + i) * 8 + bit;
          if (c >= boot.clusterCount) break;
          if (!(byte & (1 << bit))) b.add(c * cs, (c + 1) * cs);
        }
      }
    }
    const free = b.build();

    // Structures that must be in use; if the bitmap says otherwise, it is not to be believed.
    const musts: [string, Extents][] = [
      ['boot sector', Extents.of(0, cs)],
      ['$MFT', runExtents(nv.mftExtents, cs)],
      ['$MFTMirr', runExtents(mirrRuns, cs)],
      ['$Bitmap', runExtents(data.runs, cs)],
    ];
    for (const [what, ext] of musts) {
      const clash = free.intersect(ext);
      if (!clash.isEmpty) throw new CorruptError(`ntfs: $Bitmap marks ${what} cluster ${clash.toArray()[0]!.start / cs} free`);
    }
    result.free = free;
    result.freeBytes = free.total();
    result.usedBytes = result.size - result.freeBytes;
    result.trusted = true;
    return result;
  },
};
