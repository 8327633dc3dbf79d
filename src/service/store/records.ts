/**
 * What the service keeps: storage domains, hosts, disks, jobs and their attempts, events and
 * settings. Every field says what it holds; times are milliseconds since the epoch.
 */

export type SparsifyMode = 'in-place' | 'copy-and-replace';
export type DiskHealth = 'ok' | 'illegal';
export type Allocation = 'sparse' | 'preallocated';

/**
 * When in-place sparsify compacts an image (moves its kept data down and shortens it, which gives
 * space back on any storage), chosen per storage domain:
 * - always: every compactable image is compacted;
 * - where-no-holes (the default): only where the storage cannot punch holes (or the device
 *   cannot discard), where compaction is the only way space goes back;
 * - never: never asked for; a compactable disk on storage that cannot punch holes is refused.
 * VDI compacts whatever is asked: its format needs its used blocks dense.
 */
export type CompactionSetting = 'always' | 'where-no-holes' | 'never';
export const COMPACTION_SETTINGS: readonly CompactionSetting[] = ['always', 'where-no-holes', 'never'];
export const DEFAULT_COMPACTION: CompactionSetting = 'where-no-holes';
/** The settings in words, for events and messages: "compacts ...". */
export const COMPACTION_TEXT: Record<CompactionSetting, string> = {
  always: 'every image it can',
  'where-no-holes': 'only where the storage cannot punch holes',
  never: 'nothing (a compactable disk on storage that cannot punch holes is refused)',
};

/** A storage domain: a folder of images shared by hosts, named by the UUID in its metadata file. */
export interface DomainRecord {
  id: string;
  name: string;
  createdAt: number;
  /** Cluster-wide: every host reads it from the store when it runs a job. */
  compaction: CompactionSetting;
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

/**
 * A disk that is a block device: the domain holds a symlink to it (as VDSM's images tree does for
 * logical volumes). What Linux says about the device, as the host that scanned it last saw it.
 */
export interface DeviceFacts {
  /** Where the symlink leads on that host (/dev/dm-3, /dev/loop0). */
  target: string;
  /** The device's capacity in bytes. */
  size: number;
  /** queue/discard_max_bytes: 0 when the device cannot discard; null when sysfs does not say. */
  discardMaxBytes: number | null;
  /** queue/discard_granularity: the unit discards work in (null: not said). */
  discardGranularity: number | null;
  /** device/scsi_disk/<h:c:t:l>/provisioning_mode of a SCSI disk (full, unmap, writesame_16, ...). */
  provisioningMode: string | null;
  /** The kernel holds the device (mounted, swap, or under RAID, LVM or device-mapper): an exclusive open fails with EBUSY. */
  held: boolean;
}

export interface DiskRecord {
  id: string;
  domainId: string;
  /** Path relative to the domain's root. */
  rel: string;
  name: string;
  /** Inode number (of the symlink, for a block device): a file renamed inside its domain keeps its id (st_dev differs between hosts, st_ino does not). */
  ino: number;
  /** File length; a block device's capacity. */
  size: number;
  mtimeMs: number;
  ctimeMs: number;
  format: string | null;
  /** What the probe says of the format's variant (vmdk monolithicSparse, vpc fixed, vdi dynamic...); absent in older records. */
  subformat?: string | null;
  virtualSize: number | null;
  /** Host bytes of the file (st_blocks * 512); of a block device, its capacity (what it takes of its volume group or SAN). */
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
  /** Set when the disk is a block device (absent in records older than block-device support). */
  device?: DeviceFacts | null;
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
  /** 'trim': a running VM's guest trims its own filesystems through its agent (jobs/trim.ts). */
  mode: SparsifyMode | 'trim';
  ignore: string[];
  zero: string[];
  /** A trim job's VM and every disk of it that lies in a storage domain (all locked by the job; diskId is the first). */
  trim?: TrimTarget;
}

export interface TrimTarget {
  vmId: string;
  vmName: string;
  /** The host whose libvirt runs the VM: the job runs there. */
  vmHost: string;
  diskIds: string[];
}

/** What a trim job measured: each image's allocation around the guest's fstrim, and the guest's own figures. */
export interface TrimResult {
  images: Array<{ target: string; source: string; diskId: string | null; allocatedBefore: number | null; allocatedAfter: number | null; givenBack: number | null }>;
  /** Sum of the images' givenBack (null when no image could be measured, e.g. only block devices). */
  givenBack: number | null;
  /** guest-fstrim's answer per mountpoint: what the guest trimmed, not what the host got back. */
  guest: Array<{ path: string; trimmed: number | null; error: string | null }>;
  /** Seconds the guest took to trim. */
  seconds: number;
}

/**
 * What an in-place job measured, from the engine's report (never estimated). Host space comes back
 * two ways: holes punched in the file (or BLKDISCARD on a device) and, when the image is
 * compacted, the truncation of its end.
 */
export interface JobResult {
  /** Host bytes the image occupied before and after (du), measured by the engine around the operation; null on a block device (only the device knows its allocation). */
  allocatedBefore: number | null;
  allocatedAfter: number | null;
  /** allocatedBefore - allocatedAfter: given back in all (null on a block device). */
  givenBack: number | null;
  /** Of which the truncation released (measured around it). */
  byTruncation: number;
  /**
   * The rest: holes punched (null on a block device). Measured, so it may be a little negative
   * where compaction's own metadata writes took more than the holes gave back.
   */
  byHoles: number | null;
  /** Virtual bytes discarded (made unallocated or zero); on a block device, what BLKDISCARD was sent for. */
  discarded: number;
  /** Freed space could be released to the host (holes, BLKDISCARD). */
  released: boolean;
  compacted: boolean;
  /** Where the image ended before and after: the file's length; on a block device, the image's last used byte after compaction, else the device's size. */
  endBefore: number;
  endAfter: number;
  /** Bytes compaction moved. */
  bytesMoved: number;
  /** Not compacted, though the format can be: where compaction would end the image. */
  compactableEnd: number | null;
  isBlockDevice: boolean;
  /** What the job asked of the engine, from its domain's compaction setting. */
  compaction: CompactionSetting;
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
  /** In place: the engine's measured figures (absent in jobs older than compaction, and for copy-and-replace). */
  result?: JobResult | null;
  /** A trim job's figures. */
  trimResult?: TrimResult | null;
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
  | 'domain-changed'
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
