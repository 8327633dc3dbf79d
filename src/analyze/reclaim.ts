/**
 * What sparsifying can really give back, in three figures that differ only for a backing chain:
 * - reclaimable: free in the guest AND allocated in the top image file itself, in whole allocation
 *   units (qcow2 clusters): only the top file's own clusters can be dropped, and only whole ones;
 * - free in the guest: free in the guest's filesystems and allocated anywhere in the chain;
 * - snapshot-only: free in the guest but allocated in backing files only (earlier snapshots). Those
 *   files are read-only to us, so this space comes back only once the snapshots are merged.
 */
import { Extents } from '../io/extents.js';
import type { LayerInfo } from '../formats/types.js';
import { walk, type DiskMap, type MapNode } from './diskmap.js';

/**
 * The unit in which a layer gives space back: a qcow2 cluster or a vdi block is dropped whole or
 * not at all. Other formats give back any range (their free ranges are filesystem blocks already).
 */
export function allocationUnit(layer: LayerInfo | undefined): number {
  const d = layer?.details;
  if (layer?.format === 'qcow2' && typeof d?.cluster_size === 'number') return d.cluster_size;
  if (layer?.format === 'vdi' && typeof d?.block_size === 'number') return d.block_size;
  return 1;
}

/** Free ranges of `node` and everything below it, in disk coordinates. */
export function subtreeFree(node: MapNode): Extents {
  let free = new Extents();
  for (const n of walk(node)) free = free.union(n.free);
  return free;
}

/** Free bytes under `node` that the top image file itself holds, in whole allocation units. */
export function reclaimableBytes(map: DiskMap, node: MapNode = map.root): number {
  return subtreeFree(node).alignInward(map.allocationUnit).intersect(map.ownData).total();
}

/** Free bytes under `node` that the image (any layer of its chain) has allocated. */
export function freeInGuestBytes(map: DiskMap, node: MapNode = map.root): number {
  return subtreeFree(node).intersect(map.data).total();
}

/** Free bytes under `node` allocated only in backing files: not reclaimable until they are merged. */
export function snapshotOnlyBytes(map: DiskMap, node: MapNode = map.root): number {
  if (map.layers.length < 2) return 0;
  return subtreeFree(node).intersect(map.data.subtract(map.ownData)).total();
}
