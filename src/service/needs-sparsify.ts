/**
 * The "needs sparsify" rule: a disk needs sparsify when it could give back at least the policy's
 * threshold in bytes and in percent of its actual size. A rule of its own, apart from the schedule
 * that acts on it (policy.ts), so the views can show it without depending on the service's rooms.
 */
import type { PolicyConfig } from './config.js';
import type { DiskRecord } from './store/records.js';

export function needsSparsify(d: Pick<DiskRecord, 'analysis' | 'actualSize'>, p: PolicyConfig): boolean {
  const r = d.analysis?.reclaimableBytes ?? 0;
  return r > 0 && r >= p.thresholdBytes && r * 100 >= p.thresholdPercent * d.actualSize;
}
