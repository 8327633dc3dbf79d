/**
 * What the service keeps: storage domains, hosts, disks, jobs and their attempts, events and
 * settings. Every field says what it holds; times are milliseconds since the epoch.
 */

export type SparsifyMode = 'in-place' | 'copy-and-replace';
export type DiskHealth = 'ok' | 'illegal';
export type Allocation = 'sparse' | 'preallocated';

/** A storage domain: a folder of images shared by hosts, named by the UUID in its metadata file. */
export interface DomainRecord {
  id: string;
  name: string;
  createdAt: number;
}

export type HostStatus = 'up' | 'non-responsive' | 'stopped';

export interface HostRecord {
  /** --host-name; unique in the cluster. */
  name: string;
  /** Random per process start: tells a restarted host from a second process using the same name. */
  instance: string;
  status: HostStatus;
  version: string;
  /** The address its API listens on. */
  url: string | null;
  startedAt: number;
  /** Database clock. */
  lastHeartbeat: number;
  concurrency: number;
}

/** A domain as one host sees it: where it is mounted there, and whether it is reachable now. */
export interface HostDomain {
  host: string;
  domainId: string;
  path: string;
  reachable: boolean;
  canDiscard: boolean;
  error: string | null;
  checkedAt: number;
}

/** What the analysis found, small enough to list 2,000 disks quickly (the full map is kept apart). */
export interface AnalysisSummary {
  dataBytes: number;
  /** Free in the guest and held by the disk's own file (the top of its chain): what sparsify gives back. */
  reclaimableBytes: number;
  /** Bytes the disk's own file holds as data (dataBytes counts the whole chain); absent in analyses older than schema 3. */
  ownDataBytes?: number;
  /** Free in the guest but held only by backing files (earlier snapshots); absent in analyses older than schema 3. */
  snapshotOnlyBytes?: number;
  /** The advice to merge the snapshots first, when snapshotOnlyBytes > 0. */
  snapshotAdvice?: string;
  warnings: string[];
  /** LUKS volumes found: opened with a key from the keys file (sparsified inside), or kept whole. */
  encrypted?: { opened: number; keptWhole: number };
}

/** A backing file, as a domain and a path inside it (the same on every host), when it is in a domain. */
export interface BackingRef {
  domainId: string;
  rel: string;
}

export interface DiskRecord {
  id: string;
  domainId: string;
  /** Path relative to the domain's root. */
  rel: string;
  name: string;
  /** Inode number: a file renamed inside its domain keeps its id (st_dev differs between hosts, st_ino does not). */
  ino: number;
  size: number;
  mtimeMs: number;
  ctimeMs: number;
  format: string | null;
  virtualSize: number | null;
  /** Host bytes of the file (st_blocks * 512). */
  actualSize: number;
  /** Bytes of the file that SEEK_DATA reports as data (fallocated but unwritten space is not). */
  hostDataBytes: number;
  /** Paths of the chain, top first, as the host that probed it last saw them. */
  chain: string[];
  /** The backing file, when it lies in a domain. */
  backingRef: BackingRef | null;
  backingId: string | null;
  snapshots: number;
  health: DiskHealth;
  error: string | null;
  /** Set by the user; null: detected. */
  allocationOverride: Allocation | null;
  analysis: AnalysisSummary | null;
  /** Stat key the analysis was made for; a different key means it is stale. */
  analysisKey: string | null;
  analysisError: string | null;
  analyzedAt: number | null;
  /** Another process held QEMU's write lock when last checked. */
  inUse: boolean;
  /** The job holding the disk; set and cleared only by the job transitions. */
  lockedBy: string | null;
  present: boolean;
  firstSeen: number;
  lastSeen: number;
}

export type JobStatus = 'pending' | 'running' | 'finished' | 'failed' | 'cancelled';
export type StepName = 'validating' | 'executing' | 'finalizing';
export type StepStatus = 'pending' | 'running' | 'finished' | 'failed' | 'cancelled';

export interface JobStep {
  name: StepName;
  status: StepStatus;
  startedAt: number | null;
  endedAt: number | null;
  /** Bytes done and planned, from the engine (executing). */
  done: number;
  total: number;
  detail?: string;
}

export interface JobOptions {
  mode: SparsifyMode;
  ignore: string[];
  zero: string[];
}

export interface JobRecord {
  id: string;
  diskId: string;
  diskName: string;
  domainId: string;
  options: JobOptions;
  status: JobStatus;
  steps: JobStep[];
  origin: 'api' | 'schedule';
  /** Also when the disk was locked for it. */
  createdAt: number;
  /** Last (re)queued: a pending job left undelivered too long is queued again. */
  queuedAt: number;
  startedAt: number | null;
  endedAt: number | null;
  /** When its end released the disk. */
  unlockedAt: number | null;
  /** Claims so far. The current one is the job's fencing token: only the host that made it may write. */
  attempts: number;
  /** The host running the job now, or the last one that ran it. */
  host: string | null;
  cancelRequested: boolean;
  actualBefore: number | null;
  actualAfter: number | null;
  bytesReclaimed: number | null;
  error: string | null;
  warnings: string[];
}

export type AttemptOutcome = 'running' | 'finished' | 'failed' | 'cancelled' | 'taken-over' | 'handed-back' | 'interrupted';

/** One host's run of a job, from its claim to its end. Attempts of one disk never overlap. */
export interface JobAttempt {
  jobId: string;
  attempt: number;
  diskId: string;
  host: string;
  startedAt: number;
  endedAt: number | null;
  outcome: AttemptOutcome;
  error: string | null;
}

export type EventType =
  | 'job-started'
  | 'job-succeeded'
  | 'job-failed'
  | 'job-cancelled'
  | 'job-restarted'
  | 'job-taken-over'
  | 'disk-added'
  | 'disk-removed'
  | 'disk-illegal'
  | 'domain-attached'
  | 'domain-unreachable'
  | 'domain-reachable'
  | 'host-up'
  | 'host-non-responsive'
  | 'host-stopped'
  | 'policy-run'
  | 'service';

export type Severity = 'info' | 'warning' | 'error';

export interface EventRecord {
  id: number;
  time: number;
  severity: Severity;
  type: EventType;
  diskId: string | null;
  jobId: string | null;
  host: string | null;
  message: string;
}

export type NewEvent = Omit<EventRecord, 'id' | 'time' | 'host'> & { host?: string | null };
