/**
 * Containers: structures that divide a volume into further volumes (partition tables, LVM PVs)
 * or hide it (LUKS). Each produces child volumes, which the analyzer examines in turn.
 */
import type { Extents } from '../io/extents.js';
import type { Volume } from './volume.js';

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
}

export interface ContainerReader {
  readonly name: string;
  /** Only probed on whole disks (partition tables) or on any volume. */
  readonly scope: 'disk' | 'any';
  probe(volume: Volume): Promise<boolean>;
  analyze(volume: Volume): Promise<ContainerAnalysis>;
}
