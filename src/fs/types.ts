/**
 * One free-space reader per filesystem. A reader looks at a volume and says what it is,
 * how much is used, and which byte ranges are provably free. When anything is doubtful
 * (dirty journal, unknown feature, failed checksum) it returns `trusted: false` with a
 * reason, and the caller keeps the whole volume.
 */
import type { Extents } from '../io/extents.js';
import type { Volume } from '../layout/volume.js';

export interface FsAnalysis {
  /** Short type name as blkid would print it: ext2, ext3, ext4, xfs, btrfs, ntfs, vfat, exfat, swap. */
  type: string;
  label?: string;
  uuid?: string;
  /** Allocation unit in bytes (block, cluster); free ranges are multiples of it. */
  blockSize: number;
  /** Bytes of the volume the filesystem spans. */
  size: number;
  usedBytes: number;
  freeBytes: number;
  /** Free ranges in volume coordinates. Must be empty when `trusted` is false. */
  free: Extents;
  /** False when the free map must not be used; `warnings` then says why. */
  trusted: boolean;
  /** Human-readable reasons and remarks, without the device name (the caller adds it). */
  warnings: string[];
  /** Informational remarks (not warnings), e.g. "LUKS container kept whole". */
  info?: string[];
  /** Extra facts for --analyze (version, features, journal state...). */
  details?: Record<string, string | number | boolean>;
}

export interface FsReader {
  /** Name used in messages and the registry. */
  readonly name: string;
  /** Cheap check of magic numbers. Must not throw on garbage; returns false instead. */
  probe(volume: Volume): Promise<boolean>;
  /**
   * Full analysis. May throw CorruptError/SparsifyError for malformed structures;
   * the caller then keeps the volume whole and reports the message as a warning.
   */
  analyze(volume: Volume): Promise<FsAnalysis>;
}
