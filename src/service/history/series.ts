/**
 * The job history as two kinds of time series, for charts: the space sparsify gave back, summed
 * over time, and each storage domain's actual size as the jobs changed it. The second is rebuilt
 * from the domain's size now and each finished job's before and after sizes, walking back from the
 * present; what guests wrote between jobs is not in the job history and so not in the series.
 */
import type { DiskRecord, DomainRecord, JobRecord } from '../store/records.js';

/** [time (ms), bytes] */
export type Point = [number, number];

export interface HistoryView {
  since: number;
  now: number;
  /** Finished jobs in the window. */
  jobs: number;
  /** Bytes given back, summed from `since`: one point per finished job that gave something back. */
  reclaimed: Point[];
  /** Each domain's actual size, each value holding until the next point: at `since`, after each job, and now. */
  domains: Array<{ id: string; name: string; actualBytes: number; points: Point[] }>;
}

export function historySeries(jobs: readonly JobRecord[], disks: ReadonlyArray<Pick<DiskRecord, 'present' | 'domainId' | 'actualSize'>>, domains: ReadonlyArray<Pick<DomainRecord, 'id' | 'name' | 'createdAt'>>, since: number, now = Date.now()): HistoryView {
  const done = jobs
    .filter((j) => j.status === 'finished' && j.endedAt !== null && j.endedAt >= since && j.endedAt <= now)
    .sort((a, b) => a.endedAt! - b.endedAt! || (a.id < b.id ? -1 : 1));
  const reclaimed: Point[] = [];
  let sum = 0;
  for (const j of done) {
    if (!j.bytesReclaimed) continue;
    sum += j.bytesReclaimed;
    reclaimed.push([j.endedAt!, sum]);
  }
  const names = new Map(domains.map((d) => [d.id, d.name]));
  const size = new Map<string, number>();
  for (const d of disks) if (d.present) size.set(d.domainId, (size.get(d.domainId) ?? 0) + d.actualSize);
  const ids = new Set([...size.keys(), ...done.map((j) => j.domainId)]);
  const out: HistoryView['domains'] = [];
  for (const id of ids) {
    const current = size.get(id) ?? 0;
    const points: Point[] = [[now, current]];
    let after = current;
    for (const j of [...done].reverse()) {
      if (j.domainId !== id || j.actualBefore === null || j.actualAfter === null) continue;
      points.push([j.endedAt!, after]);
      after = Math.max(0, after + (j.actualBefore - j.actualAfter));
    }
    points.push([since, after]);
    points.reverse();
    out.push({ id, name: names.get(id) ?? id, actualBytes: current, points });
  }
  out.sort((a, b) => a.name.localeCompare(b.name) || (a.id < b.id ? -1 : 1));
  return { since, now, jobs: done.length, reclaimed, domains: out };
}
