/**
 * A copy of the top layer of a backing chain that keeps the backing file: which clusters the new
 * overlay must hold so that, over the same backing file, the guest reads what it read through the
 * old one in every byte it uses.
 * - A cluster the old top layer does not hold falls through to the backing file, as before.
 * - A cluster whose own bytes (data, or zero hiding the backing file) are all free in the guest may
 *   fall through too: the backing file's data then shows only where nothing is used.
 * - Every other cluster is written whole: used bytes as the guest reads them through the chain,
 *   free bytes as zeros. So a partly used cluster keeps every used byte.
 * - --zero devices must read as zero, so their clusters are written too (as zero clusters).
 */
import type { Extents } from '../io/extents.js';
import type { Plan } from './plan.js';

/**
 * @param own the ranges the old top layer holds itself (data or zero), in disk coordinates
 * @param clusterSize the new overlay's cluster size
 */
export function overlayClusters(own: Extents, plan: Plan, clusterSize: number): Extents {
  const freeInGuest = plan.discard.subtract(plan.zero);
  return own.subtract(freeInGuest).union(plan.zero).alignOutward(clusterSize).clip(0, plan.virtualSize);
}
