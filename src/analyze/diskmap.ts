/** The DiskMap: the tree disk -> tables -> volumes -> content, which is both the analysis and the report. */
import type { Extents } from '../io/extents.js';
import type { LayerInfo } from '../formats/types.js';

export type VolumeRole = 'disk' | 'partition' | 'logical-volume';
export type ContentKind = 'partition-table' | 'filesystem' | 'swap' | 'volume-group' | 'encrypted' | 'unknown' | 'empty';

export interface MapNode {
  /** libguestfs-style device name: /dev/sda, /dev/sda1, /dev/VG/LV. */
  device: string;
  role: VolumeRole;
  /** Disk offset of the volume's first byte, and its size. */
  offset: number;
  size: number;
  /** What the volume holds: gpt, mbr, ext4, xfs, swap, lvm2, luks2, unknown, empty. */
  content: string;
  contentKind: ContentKind;
  label?: string;
  uuid?: string;
  /** Filesystem figures, when the content is a filesystem. */
  usedBytes?: number;
  freeBytes?: number;
  /** False when the content's free map is not used (dirty, unknown feature, failed check). */
  trusted: boolean;
  /** True when the content was named (blkid's type) but sparsify has no reader for it. */
  unsupported?: boolean;
  /** The disk ranges the volume occupies (one range unless it is a scattered LV). */
  diskRanges: Extents;
  /** Free ranges this node itself contributes, in disk coordinates (children have their own). */
  free: Extents;
  /**
   * What --zero may drop of this device, when that is less than diskRanges: inside an encrypted
   * volume, only whole encryption sectors. Absent: diskRanges.
   */
  zeroRanges?: Extents;
  warnings: string[];
  info: string[];
  details: Record<string, string | number | boolean>;
  children: MapNode[];
}

export interface DiskMap {
  path: string;
  format: string;
  virtualSize: number;
  /** Host bytes allocated by the image file(s). */
  allocatedBytes: number;
  layers: LayerInfo[];
  root: MapNode;
  /** The disk ranges the image has allocated as data (not in the JSON report, like MapNode.free). */
  data: Extents;
  /** Their total. */
  dataBytes: number;
  /**
   * The disk ranges the top image file itself holds as data (not in the JSON report). For a single
   * file this is `data`; for a backing chain, the top layer's own clusters only.
   */
  ownData: Extents;
  /** Their total. */
  ownDataBytes: number;
  /** The top file gives space back in whole units of this many bytes (qcow2 cluster, vdi block; else 1). */
  allocationUnit: number;
}

/** Depth-first walk. */
export function* walk(node: MapNode): Generator<MapNode> {
  yield node;
  for (const c of node.children) yield* walk(c);
}

/** All warnings, prefixed by their device. */
export function allWarnings(map: DiskMap): string[] {
  const out: string[] = [];
  for (const n of walk(map.root)) for (const w of n.warnings) out.push(`${n.device}: ${w}`);
  return out;
}

export function allInfo(map: DiskMap): string[] {
  const out: string[] = [];
  for (const n of walk(map.root)) for (const w of n.info) out.push(`${n.device}: ${w}`);
  return out;
}
