/**
 * In-place mode end to end: open the image for writing under QEMU write locks, analyze, plan,
 * and discard the planned ranges through the format driver (hole punching, BLKDISCARD, qcow2/vdi
 * metadata updates), in an order that survives a crash at any instant.
 */
import { SparsifyError } from '../io/errors.js';
import type { DiskMap } from '../analyze/diskmap.js';
import type { Plan } from '../plan/plan.js';
import type { OperationEvents } from './events.js';

export interface InPlaceRequest extends OperationEvents {
  path: string;
  /** Input format; detected when absent. */
  format?: string;
  ignore?: string[];
  zero?: string[];
}

export interface InPlaceReport {
  map: DiskMap;
  plan: Plan;
  format: string;
  /** Bytes of the virtual disk discarded (made unallocated or zero). */
  bytesDiscarded: number;
  /** Host bytes the image occupied before and after (du). */
  allocatedBefore: number;
  allocatedAfter: number;
}

export async function sparsifyInPlace(_req: InPlaceRequest): Promise<InPlaceReport> {
  throw new SparsifyError('--in-place is not supported yet');
}
