/**
 * Containers: structures that divide a volume into further volumes (partition tables, LVM PVs)
 * or hide it (LUKS). Each produces child volumes, which the analyzer examines in turn.
 */
import type { Extents } from '../io/extents.js';
import type { Volume } from './volume.js';
import type { KeyProvider } from './luks/keys.js';

export interface ChildVolume {
  volume: Volume;
  /** Partition number, LV name... shown by --analyze. */
  details?: Record<string, string | number | boolean>;
}

export interface ContainerAnalysis {
  /** gpt, mbr, lvm2, luks1, luks2 */
  type: string;
  children: ChildVolume[];
  /**
   * Space of the parent volume that the container itself says is unused and may be reclaimed
   * (free LVM physical extents), in the parent volume's coordinates. Empty when unsure.
   */
  free: Extents;
  warnings: string[];
  info?: string[];
  details?: Record<string, string | number | boolean>;
  /**
   * Set when the child is the decrypted payload of this container: a ciphertext sector is dropped
   * only as a whole, so free space found inside is rounded inward to whole `sectorSize` sectors of
   * `payload` (the child volume), and `wipe` zeroes the volume key once the analysis is done.
   */
  encrypted?: { payload: Volume; sectorSize: number; wipe(): void };
}

/** What the analyzer hands every container reader besides the volume. */
export interface ContainerContext {
  /** Keys for encrypted volumes; without them, they are kept whole. */
  keys?: KeyProvider;
  /** A short line for -x / -v; never a secret. */
  trace(msg: string): void;
}

export interface ContainerReader {
  readonly name: string;
  /** Only probed on whole disks (partition tables) or on any volume. */
  readonly scope: 'disk' | 'any';
  probe(volume: Volume): Promise<boolean>;
  analyze(volume: Volume, ctx?: ContainerContext): Promise<ContainerAnalysis>;
}
