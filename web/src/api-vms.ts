/** The API of virtual machines, the policy, the job history and one disk's jobs, as the UI uses it. */
import { call, type Job } from './api';

export interface VmDisk {
  target: string;
  device: string;
  type: string;
  source: string | null;
  /** The disk of a storage domain, when the file lies in one. */
  diskId: string | null;
  path: string | null;
}

export interface Vm {
  id: string;
  name: string;
  host: string;
  state: string;
  reason: string | null;
  up: boolean;
  /** The guest agent's channel, as the host that runs the VM sees it (null: not known here). */
  agent: 'connected' | 'disconnected' | 'none' | null;
  /** Every writable disk passes discards through (discard='unmap'); null: not known here. */
  discard: boolean | null;
  /** The Trim button of a VM that is up (null when it is down: its disks are sparsified instead). */
  trim: { allowed: boolean; code?: string; reason?: string } | null;
  disks: VmDisk[];
}

export interface VmSource {
  host: string;
  uri: string;
  error: string | null;
  refreshedAt: number;
}

export interface Policy {
  thresholdBytes: number;
  thresholdPercent: number;
  scheduleEnabled: boolean;
  scheduleIntervalSeconds: number;
  /** Running VMs (UUIDs) the schedule trims through their agents (opt-in). */
  trimVms?: string[];
  trimDomains?: string[];
  trimOneAtATime?: boolean;
}

/** [time ms, bytes] */
export type Point = [number, number];

export interface History {
  since: number;
  now: number;
  jobs: number;
  reclaimed: Point[];
  domains: Array<{ id: string; name: string; actualBytes: number; points: Point[] }>;
}

export const vmApi = {
  vms: () => call<{ vms: Vm[]; sources: VmSource[] }>('GET', '/api/vms'),
  refreshVms: () => call<{ vms: Vm[]; sources: VmSource[] }>('POST', '/api/vms/refresh'),
  policy: () => call<{ policy: Policy }>('GET', '/api/policy').then((r) => r.policy),
  setPolicy: (p: Partial<Policy>) => call<{ policy: Policy }>('PUT', '/api/policy', p).then((r) => r.policy),
  history: (days: number) => call<History>('GET', `/api/history?days=${days}`),
  trim: (vmId: string) => call<{ job: Job }>('POST', `/api/vms/${vmId}/trim`).then((r) => r.job),
  job: (jobId: string) => call<{ job: Job }>('GET', `/api/jobs/${jobId}`).then((r) => r.job),
  diskJobs: (diskId: string) => call<{ jobs: Job[] }>('GET', `/api/jobs?diskId=${diskId}&limit=100`).then((r) => r.jobs),
};

export const VM_STATE_TEXT: Record<string, string> = {
  running: 'running',
  paused: 'paused',
  migrating: 'migrating',
  'shutting-down': 'shutting down',
  'shut-off': 'down',
  crashed: 'crashed',
  suspended: 'suspended',
  blocked: 'blocked',
  idle: 'idle',
  unknown: 'unknown',
};
