/**
 * The schedule's trim of running VMs (jobs/trim-schedule.ts) without a guest (the trim itself is
 * tested with a real one in trim.test.ts): which VMs it picks (opted in by UUID or by storage
 * domain, running, on this host, a disk over the threshold, not locked), and that with
 * trimOneAtATime it starts the next trim only once the previous one ended.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { TrimSchedule } from '../../src/service/jobs/trim-schedule.js';
import type { ServiceContext } from '../../src/service/context.js';
import type { PolicyConfig } from '../../src/service/config.js';
import type { DiskRecord, JobRecord } from '../../src/service/store/records.js';
import type { VmRecord } from '../../src/service/store/vms.js';

const GiB = 1 << 30;
const uuid = (n: number) => `00000000-0000-4000-8000-00000000000${n}`;
const vm = (n: number, state: VmRecord['state'], host: string, domainId: string, rel: string): VmRecord => ({ host, uuid: uuid(n), name: `vm${n}`, state, reason: null, disks: [{ target: 'vda', device: 'disk', type: 'file', source: `/d/${rel}`, domainId, rel }] });
const disk = (rel: string, domainId: string, reclaimable: number, lockedBy: string | null = null) => ({ id: `id-${rel}`, domainId, rel, actualSize: 4 * GiB, lockedBy, analysis: { reclaimableBytes: reclaimable } }) as unknown as DiskRecord;

function harness(vms: VmRecord[], disks: DiskRecord[]) {
  const calls: string[] = [];
  const ended = new Set<string>();
  const events: string[] = [];
  const ctx = {
    host: 'h1',
    log: { error: () => undefined },
    record: async (e: { message: string }) => void events.push(e.message),
    store: {
      vms: { list: async () => vms },
      disks: { atPlaces: async (places: Array<{ domainId: string; rel: string }>) => disks.filter((d) => places.some((p) => p.domainId === d.domainId && p.rel === d.rel)) },
      jobs: {
        get: async (id: string) => {
          // A trim ends a moment after it started; the next one must not start before.
          setTimeout(() => ended.add(id), 50);
          return { id, status: ended.has(id) ? 'finished' : 'running' } as JobRecord;
        },
      },
    },
  } as unknown as ServiceContext;
  const trim = async (vmId: string) => {
    assert.ok(calls.every((c) => ended.has(`job-${c}`)), `${vmId} started while another trim ran`);
    calls.push(vmId);
    return vmId === uuid(6) ? { refusal: { status: 409 as const, code: 'agent-unavailable', detail: 'no agent' } } : { job: { id: `job-${vmId}` } as JobRecord };
  };
  return { schedule: new TrimSchedule(ctx, async () => policy, trim, 5), calls, events };
}

const policy: PolicyConfig = { thresholdBytes: GiB, thresholdPercent: 10, scheduleEnabled: true, scheduleIntervalSeconds: 3600, trimVms: [uuid(1), uuid(2), uuid(3), uuid(4), uuid(6)], trimDomains: ['domB'] };

describe('the schedule’s trim of running VMs', { timeout: 30_000 }, () => {
  it('trims only opted-in running VMs of this host whose disk needs it, one at a time', async () => {
    const { schedule, calls, events } = harness(
      [
        vm(1, 'running', 'h1', 'domA', 'a1'), // opted in, needs it
        vm(2, 'shut-off', 'h1', 'domA', 'a2'), // down: sparsified instead
        vm(3, 'running', 'h2', 'domA', 'a3'), // another host's
        vm(4, 'running', 'h1', 'domA', 'a4'), // under the threshold
        vm(5, 'running', 'h1', 'domB', 'b5'), // opted in by its domain
        vm(6, 'running', 'h1', 'domA', 'a6'), // opted in, refused
        vm(7, 'running', 'h1', 'domA', 'a7'), // not opted in
        vm(8, 'running', 'h1', 'domB', 'b8'), // its disk is locked by a job
      ],
      [disk('a1', 'domA', 2 * GiB), disk('a2', 'domA', 2 * GiB), disk('a3', 'domA', 2 * GiB), disk('a4', 'domA', GiB / 2), disk('b5', 'domB', 3 * GiB), disk('a6', 'domA', 2 * GiB), disk('a7', 'domA', 2 * GiB), disk('b8', 'domB', 2 * GiB, 'job-x')],
    );
    const started = await schedule.run(policy);
    assert.deepEqual(calls, [uuid(1), uuid(5), uuid(6)]);
    assert.deepEqual(started.map((j) => j.id), [`job-${uuid(1)}`, `job-${uuid(5)}`]);
    assert.match(events[0]!, /3 running VM\(s\) need it, 2 trimmed; refused: vm6: agent-unavailable/);
  });

  it('trims nothing when no VM or domain is opted in', async () => {
    const { schedule, calls } = harness([vm(1, 'running', 'h1', 'domA', 'a1')], [disk('a1', 'domA', 2 * GiB)]);
    assert.deepEqual(await schedule.run({ ...policy, trimVms: [], trimDomains: [] }), []);
    assert.deepEqual(calls, []);
  });
});
