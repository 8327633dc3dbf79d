/**
 * Content sparsify has no reader for, named as blkid names it, so the warning that keeps it whole
 * says what it is. Identification only: nothing here claims any space free. The signatures are the
 * superblock magics libblkid checks, with a field or two of sanity checks where a magic is short.
 */
import type { Volume } from '../layout/volume.js';

export type ForeignKind = 'filesystem' | 'encrypted' | 'member';

export interface ForeignContent {
  /** blkid's TYPE: minix, jfs, reiserfs, hfsplus, ufs, zfs_member, f2fs, squashfs, iso9660, udf, bcachefs... */
  type: string;
  kind: ForeignKind;
}

/** Reads `len` bytes at `offset`, or undefined past the end of the volume. */
type Peek = (offset: number, len: number) => Promise<Buffer | undefined>;

interface Signature {
  type: string;
  kind: ForeignKind;
  /** Returns the type (which may refine `type`, e.g. squashfs3), or undefined when absent. */
  match(peek: Peek, size: number): Promise<string | undefined>;
}

/** A fixed string or byte pattern at a fixed offset. */
function magicAt(type: string, kind: ForeignKind, offset: number, magic: Buffer | string): Signature {
  const m = typeof magic === 'string' ? Buffer.from(magic, 'latin1') : magic;
  return { type, kind, match: async (peek) => ((await peek(offset, m.length))?.equals(m) ? type : undefined) };
}

function u32le(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0);
  return b;
}

function u32be(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}

/** minix v1/v2 (magic at 0x410) and v3 (at 0x418): short magics, so the bitmap block counts must make sense too. */
const minix: Signature = {
  type: 'minix',
  kind: 'filesystem',
  async match(peek) {
    const sb = await peek(1024, 32);
    if (!sb) return undefined;
    const v12 = [0x137f, 0x138f, 0x2468, 0x2478];
    if (v12.includes(sb.readUInt16LE(16))) {
      const imap = sb.readUInt16LE(4);
      const zmap = sb.readUInt16LE(6);
      const logZone = sb.readUInt16LE(10);
      return imap > 0 && zmap > 0 && logZone === 0 && sb.readUInt16LE(0) > 0 ? 'minix' : undefined;
    }
    if (sb.readUInt16LE(24) === 0x4d5a) {
      const imap = sb.readUInt16LE(6);
      const zmap = sb.readUInt16LE(8);
      const bs = sb.readUInt16LE(28);
      return imap > 0 && zmap > 0 && bs >= 512 && bs <= 65536 && (bs & (bs - 1)) === 0 ? 'minix' : undefined;
    }
    return undefined;
  },
};

const reiserfs: Signature = {
  type: 'reiserfs',
  kind: 'filesystem',
  async match(peek) {
    for (const base of [0x10000, 0x2000]) {
      const m = await peek(base + 52, 10);
      if (!m) continue;
      const s = m.toString('latin1');
      if (s.startsWith('ReIsErFs') || s.startsWith('ReIsEr2Fs') || s.startsWith('ReIsEr3Fs')) return 'reiserfs';
    }
    return (await peek(0x10000, 7))?.toString('latin1') === 'ReIsEr4' ? 'reiser4' : undefined;
  },
};

/** HFS+ ("H+"/"HX" at 1024), or classic HFS ("BD"), which may wrap an embedded HFS+ volume. */
const hfs: Signature = {
  type: 'hfsplus',
  kind: 'filesystem',
  async match(peek) {
    const sb = await peek(1024, 0x80);
    if (!sb) return undefined;
    const sig = sb.toString('latin1', 0, 2);
    if (sig === 'H+' || sig === 'HX') return 'hfsplus';
    if (sig === 'BD') return sb.toString('latin1', 0x7c, 0x7e) === 'H+' ? 'hfsplus' : 'hfs';
    return undefined;
  },
};

/** UFS1/UFS2: the magic sits 1372 bytes into a superblock at one of four places, in either byte order. */
const ufs: Signature = {
  type: 'ufs',
  kind: 'filesystem',
  async match(peek) {
    const magics = [0x00011954, 0x19540119, 0x00195612, 0x05231994];
    for (const sb of [0, 8192, 65536, 262144]) {
      const m = await peek(sb + 1372, 4);
      if (m && magics.some((x) => m.readUInt32LE(0) === x || m.readUInt32BE(0) === x)) return 'ufs';
    }
    return undefined;
  },
};

/** A ZFS pool member: its first label holds an array of uberblocks (1 KiB apart at least), each with a magic. */
const zfs: Signature = {
  type: 'zfs_member',
  kind: 'member',
  async match(peek) {
    const ring = await peek(128 << 10, 128 << 10);
    if (!ring) return undefined;
    let found = 0;
    for (let off = 0; off + 8 <= ring.length; off += 1024) {
      const v = ring.readBigUInt64LE(off);
      if (v === 0x00bab10cn || ring.readBigUInt64BE(off) === 0x00bab10cn) found++;
    }
    return found >= 4 ? 'zfs_member' : undefined;
  },
};

const squashfs: Signature = {
  type: 'squashfs',
  kind: 'filesystem',
  async match(peek) {
    const h = await peek(0, 32);
    if (!h) return undefined;
    const magic = h.toString('latin1', 0, 4);
    if (magic === 'hsqs') return h.readUInt16LE(28) >= 4 ? 'squashfs' : 'squashfs3';
    if (magic === 'sqsh') return 'squashfs3';
    return undefined;
  },
};

/** ISO 9660 and UDF share the volume recognition area at 32 KiB; UDF's NSR descriptor wins, as in blkid. */
const isoUdf: Signature = {
  type: 'iso9660',
  kind: 'filesystem',
  async match(peek) {
    const area = await peek(0x8000, 0x8000);
    if (!area) return undefined;
    let iso = false;
    let udf = false;
    for (const step of [2048, 4096, 8192]) {
      for (let off = 0; off + 6 <= area.length; off += step) {
        const id = area.toString('latin1', off + 1, off + 6);
        if (id === 'CD001') iso = true;
        if (id === 'NSR02' || id === 'NSR03') udf = true;
      }
    }
    return udf ? 'udf' : iso ? 'iso9660' : undefined;
  },
};

/** bcache's magic UUID at 4 KiB + 24 is shared by bcachefs; the version field tells them apart. */
const bcache: Signature = {
  type: 'bcachefs',
  kind: 'filesystem',
  async match(peek) {
    const sb = await peek(4096, 40);
    if (!sb) return undefined;
    const magic = sb.subarray(24, 40).toString('hex');
    if (magic === 'c68573f666ce90a9d96a60cf803df7ef') return 'bcachefs';
    if (magic !== 'c68573f64e1a45ca8265f57f48ba6d81') return undefined;
    return sb.readBigUInt64LE(16) <= 4n ? 'bcache' : 'bcachefs';
  },
};

/** Linux MD RAID superblocks: version 1.1 at 0, 1.2 at 4 KiB, 1.0 near the end, 0.90 in the last 64 KiB block. */
const mdRaid: Signature = {
  type: 'linux_raid_member',
  kind: 'member',
  async match(peek, size) {
    const magic = u32le(0xa92b4efc);
    const places = [0, 4096, Math.floor((size - 8192) / 4096) * 4096, Math.floor(size / 65536) * 65536 - 65536];
    for (const at of places) {
      if (at < 0) continue;
      const m = await peek(at, 4);
      if (m?.equals(magic) || m?.equals(u32be(0xa92b4efc))) return 'linux_raid_member';
    }
    return undefined;
  },
};

const SIGNATURES: readonly Signature[] = [
  mdRaid,
  zfs,
  bcache,
  magicAt('BitLocker', 'encrypted', 3, '-FVE-FS-'),
  magicAt('apfs', 'filesystem', 32, 'NXSB'),
  magicAt('ReFS', 'filesystem', 3, 'ReFS\0\0\0\0'),
  magicAt('jfs', 'filesystem', 0x8000, 'JFS1'),
  reiserfs,
  magicAt('f2fs', 'filesystem', 1024, u32le(0xf2f52010)),
  magicAt('erofs', 'filesystem', 1024, u32le(0xe0f5e1e2)),
  magicAt('nilfs2', 'filesystem', 1024 + 6, Buffer.from([0x34, 0x34])),
  magicAt('gfs2', 'filesystem', 0x10000, u32be(0x01161970)),
  magicAt('vxfs', 'filesystem', 1024, u32le(0xa501fcf5)),
  magicAt('hpfs', 'filesystem', 8192, u32le(0xf995e849)),
  magicAt('cramfs', 'filesystem', 0, u32le(0x28cd3d45)),
  magicAt('romfs', 'filesystem', 0, '-rom1fs-'),
  magicAt('bfs', 'filesystem', 0, u32le(0x1badface)),
  squashfs,
  isoUdf,
  hfs,
  ufs,
  minix,
];

/** Name what lies on a volume no reader claimed, or undefined when nothing known is there. */
export async function identifyForeign(vol: Volume): Promise<ForeignContent | undefined> {
  const peek: Peek = async (offset, len) => (offset >= 0 && offset + len <= vol.size ? vol.readAt(offset, len) : undefined);
  for (const s of SIGNATURES) {
    const type = await s.match(peek, vol.size);
    if (type) return { type, kind: s.kind };
  }
  return undefined;
}
