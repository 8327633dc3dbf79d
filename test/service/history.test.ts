/** The job history as chart series: the space given back summed, and a domain's size walked back from now through each job. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { historySeries } from '../../src/service/history/series.js';
import type { DiskRecord, JobRecord } from '../../src/service/store/records.js';

const job = (id: string, domainId: string, endedAt: number, before: number, after: number, status: JobRecord['status'] = 'finished') =>
  ({ id, domainId, status, endedAt, actualBefore: before, actualAfter: after, bytesReclaimed: before - after }) as JobRecord;
const disk = (domainId: string, actualSize: number, present = true) => ({ domainId, actualSize, present }) as DiskRecord;

describe('history series', { timeout: 10_000 }, () => {
  it('sums what finished jobs gave back and rebuilds each domain’s size from now backwards', () => {
    const jobs = [job('b', 'd1', 2000, 500, 300), job('a', 'd1', 1000, 900, 600), job('c', 'd2', 1500, 50, 40), job('x', 'd1', 1800, 10, 0, 'failed'), job('old', 'd1', 10, 99, 0)];
    const h = historySeries(jobs, [disk('d1', 300), disk('d1', 1000), disk('d2', 40), disk('d2', 7, false)], [{ id: 'd1', name: 'one', createdAt: 0 }], 100, 3000);
    assert.equal(h.jobs, 3);
    assert.deepEqual(h.reclaimed, [[1000, 300], [1500, 310], [2000, 510]]);
    const d1 = h.domains.find((d) => d.id === 'd1')!;
    assert.equal(d1.name, 'one');
    assert.equal(d1.actualBytes, 1300);
    // 1300 now; before job b 1500; before job a 1800.
    assert.deepEqual(d1.points, [[100, 1800], [1000, 1500], [2000, 1300], [3000, 1300]]);
    assert.deepEqual(h.domains.find((d) => d.id === 'd2')!.points, [[100, 50], [1500, 40], [3000, 40]]);
  });
});
