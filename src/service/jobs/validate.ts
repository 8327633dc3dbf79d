/**
 * Can this disk be sparsified? oVirt's checks, first failure wins, with its status codes:
 *   1. the disk exists                                   404
 *      and an up host reaches its storage domain          409
 *   2. no VM that uses it is up (libvirt, every host's)  409  (oVirt: "if the disk is attached to a VM, it must be down")
 *      and no other process has it open for writing      409  (QEMU's write lock: the second guard;
 *                                                              a block device: not held by the kernel)
 *   3. it is readable (not ILLEGAL)                      409  (moved up: later checks need the image)
 *   4. its format and storage can give space back        400  (in place: holes or BLKDISCARD, else
 *                                                              compaction as its domain allows; a
 *                                                              block device is never copied over)
 *   5. it is not preallocated                            400
 *   6. of a backing chain, only a qcow2 leaf (its own clusters are sparsified, the
 *      backing files only read); no internal snapshots  400
 *   7. it is not locked by another job                   409
 *   8. no other disk is derived from it (a backing file) 409
 * The UI calls the same function to disable the button with the same reason.
 */
import { formatDrivers } from '../../index.js';
import type { Allocation, CompactionSetting, DiskRecord, SparsifyMode } from '../store/records.js';
import { activeVms, type VmRef } from '../vms/attachments.js';

export interface Refusal {
  status: 400 | 404 | 409;
  code: string;
  detail: string;
}

export interface ValidationContext {
  /** Another process holds QEMU's write lock (tested fresh before a job is accepted where the disk is reachable). */
  heldForWriting: boolean;
  derived: DiskRecord[];
  /** Some up host reaches the disk's storage domain (else the job could never run). */
  reachable: boolean;
  /** The disk's storage domain can punch holes (some up host that reaches it can). A block device's own discard support is in the record. */
  canDiscard: boolean;
  /** The domain's compaction setting. */
  compaction: CompactionSetting;
  mode: SparsifyMode;
  /** The VMs that use the disk, as their hosts last reported them. */
  vms: readonly VmRef[];
}

/** Chains are sparsified layer by layer only in qcow2: in place, or a copy that keeps the backing file. */
export const CHAIN_FORMATS = ['qcow2'];

/**
 * Formats whose driver can discard in place (the in-place operation's contract), and of those the
 * ones that can also compact (move their kept data down and shorten the image, which gives space
 * back where holes cannot be punched): this is the one place that says so. Some subformats are
 * not taken, as the probe reports them (a record older than subformats: the engine says).
 */
export const IN_PLACE_FORMATS = ['raw', 'qcow2', 'vdi', 'vmdk', 'vpc', 'vhdx'];
export const COMPACT_FORMATS = ['qcow2', 'vdi', 'vmdk', 'vpc', 'vhdx'];
/** The only subformats in place takes, where a format's driver takes only some. */
const IN_PLACE_SUBFORMATS: Record<string, readonly string[]> = { vmdk: ['monolithicSparse'] };
/** Subformats with nothing to compact: a fixed VHD is raw data and its footer. (A fixed VHDX is not told apart by the probe: the engine refuses it on storage that cannot punch holes.) */
const UNCOMPACTABLE_SUBFORMATS: Record<string, readonly string[]> = { vpc: ['fixed'] };

/** Can the disk be sparsified in place: its format, and its subformat where that matters. */
export function inPlaceFormat(d: Pick<DiskRecord, 'format' | 'subformat'>): boolean {
  if (!d.format || !IN_PLACE_FORMATS.includes(d.format)) return false;
  const only = IN_PLACE_SUBFORMATS[d.format];
  return !only || !d.subformat || only.includes(d.subformat);
}

/** Can an in-place job compact the disk? */
export function compactable(d: Pick<DiskRecord, 'format' | 'subformat'>): boolean {
  if (!d.format || !COMPACT_FORMATS.includes(d.format)) return false;
  return !d.subformat || !(UNCOMPACTABLE_SUBFORMATS[d.format] ?? []).includes(d.subformat);
}

/**
 * Can freed space go back to the host by releasing it: holes punched in the domain's files, or
 * BLKDISCARD on a block device (unknown when sysfs does not say: the engine's first discard tells).
 */
export function storageCanRelease(d: Pick<DiskRecord, 'device'>, domainCanPunch: boolean): boolean {
  if (d.device) return d.device.discardMaxBytes !== 0;
  return domainCanPunch;
}

/** The engine's `compact` option from a domain's setting: 'auto' compacts only where the storage cannot release space. */
export function compactOption(setting: CompactionSetting): boolean | 'auto' {
  return setting === 'always' ? true : setting === 'never' ? false : 'auto';
}

/** Will an in-place job on this disk compact it? (vdi always does: its format needs it.) */
export function willCompact(d: Pick<DiskRecord, 'format' | 'subformat'>, setting: CompactionSetting, canRelease: boolean): boolean {
  if (!compactable(d)) return false;
  return d.format === 'vdi' || setting === 'always' || (setting === 'where-no-holes' && !canRelease);
}

/** A block device the kernel holds (mounted, swap, RAID, LVM, device-mapper) is never written from here. */
export function deviceHeldRefusal(d: Pick<DiskRecord, 'name' | 'device'>): Refusal | null {
  if (!d.device?.held) return null;
  return { status: 409, code: 'disk-in-use', detail: `${d.name}: the kernel holds ${d.device.target} (mounted, swap, or part of a RAID, LVM or device-mapper stack); a filesystem in use changes under any analysis, so it is not sparsified` };
}

/**
 * In place on storage that cannot release space: allowed when the image will be compacted (the
 * only way space goes back there), refused with the reason otherwise.
 */
export function storageRefusal(d: Pick<DiskRecord, 'name' | 'format' | 'subformat' | 'device'>, canRelease: boolean, compaction: CompactionSetting): Refusal | null {
  if (canRelease || !d.format) return null;
  const where = d.device ? `the block device it is (${d.device.target}) cannot discard (queue/discard_max_bytes is 0)` : 'the storage holding it cannot punch holes';
  if (!compactable(d)) {
    const why =
      d.format === 'raw'
        ? `a raw ${d.device ? 'device' : 'image'} maps the guest's bytes one to one, so it cannot be compacted either`
        : `${d.subformat ? `${d.subformat} ` : ''}${d.format} images cannot be compacted (formats: ${COMPACT_FORMATS.join(', ')})`;
    return { status: 400, code: 'storage-cannot-discard', detail: `${d.name}: ${where}, and ${why}: in-place sparsify would give nothing back${d.device ? '' : '; use mode copy-and-replace'}` };
  }
  if (compaction === 'never') {
    return { status: 400, code: 'storage-cannot-discard', detail: `${d.name}: ${where}, and its storage domain's compaction setting is never; set it to where-no-holes or always to give the space back by compacting the image` };
  }
  return null;
}

/** The mode of a request that names none: the configured one, but always in place for a block device (it cannot be copied over). */
export function defaultModeOf(d: Pick<DiskRecord, 'device'> | undefined, configured: SparsifyMode): SparsifyMode {
  return d?.device ? 'in-place' : configured;
}

/** Formats copy-and-replace can rewrite: those with a writer. */
export function copyFormats(): string[] {
  return formatDrivers().filter((d) => d.createWriter).map((d) => d.name);
}

/** Fallocated space that was never written is more than half the file: the disk was created preallocated. */
export function detectedAllocation(d: Pick<DiskRecord, 'actualSize' | 'hostDataBytes' | 'size'>): Allocation {
  const unwritten = d.actualSize - d.hostDataBytes;
  return unwritten > Math.max(1 << 20, d.size / 2) ? 'preallocated' : 'sparse';
}

export function allocationOf(d: DiskRecord): Allocation {
  return d.allocationOverride ?? detectedAllocation(d);
}

export function validateSparsify(d: DiskRecord | undefined, ctx: ValidationContext): Refusal | null {
  if (!d || !d.present) return { status: 404, code: 'disk-not-found', detail: 'no such disk' };
  const name = d.name;
  if (!ctx.reachable) return { status: 409, code: 'domain-unreachable', detail: `${name}: no host that is up reaches its storage domain now` };
  const up = activeVms(ctx.vms);
  if (up.length) {
    const which = up.map((v) => `${v.name} (${v.state} on ${v.host})`).join(', ');
    return { status: 409, code: 'vm-not-down', detail: `${name} is attached to VM ${which}; shut the VM down first` };
  }
  if (ctx.heldForWriting && !d.lockedBy) {
    return { status: 409, code: 'disk-in-use', detail: `${name} is in use: another process (a running VM?) has it open for writing` };
  }
  const held = deviceHeldRefusal(d);
  if (held && !d.lockedBy) return held;
  if (d.health === 'illegal' || !d.format) {
    return { status: 409, code: 'disk-illegal', detail: `${name} is illegal: ${d.error ?? 'the image cannot be read'}` };
  }
  if (ctx.mode === 'in-place') {
    if (!inPlaceFormat(d)) {
      const what = IN_PLACE_FORMATS.includes(d.format) ? `${d.subformat} ${d.format} images cannot be sparsified in place (only ${IN_PLACE_SUBFORMATS[d.format]!.join(', ')})` : `${d.format} images cannot be sparsified in place (formats: ${IN_PLACE_FORMATS.join(', ')})`;
      return { status: 400, code: 'format-cannot-discard', detail: `${name}: ${what}; use mode copy-and-replace` };
    }
    const storage = storageRefusal(d, storageCanRelease(d, ctx.canDiscard), ctx.compaction);
    if (storage) return storage;
  } else {
    if (d.device) return { status: 400, code: 'device-cannot-be-replaced', detail: `${name} is a block device (${d.device.target}): copy-and-replace cannot rename a new image over it; use mode in-place` };
    const ok = copyFormats();
    if (!ok.includes(d.format)) return { status: 400, code: 'format-cannot-rewrite', detail: `${name}: ${d.format} images cannot be rewritten (formats: ${ok.join(', ')})` };
  }
  if (allocationOf(d) === 'preallocated') {
    return { status: 400, code: 'disk-preallocated', detail: `${name} is preallocated: sparsifying it would undo the reason it was preallocated (mark it thin with PATCH allocation=sparse to allow it)` };
  }
  if (d.chain.length > 1 && !CHAIN_FORMATS.includes(d.format)) {
    return { status: 400, code: 'disk-has-snapshots', detail: `${name} has a backing chain of ${d.chain.length} volumes (snapshots), and only the leaf of a qcow2 chain can be sparsified; merge them first` };
  }
  if (d.snapshots > 0) {
    return { status: 400, code: 'disk-has-snapshots', detail: `${name} has ${d.snapshots} internal snapshot(s); delete or merge them first` };
  }
  if (d.lockedBy) return { status: 409, code: 'disk-locked', detail: `${name} is locked by job ${d.lockedBy}` };
  if (ctx.derived.length) {
    return { status: 409, code: 'disk-has-derived-disks', detail: `${name} has derived disks (${ctx.derived.map((x) => x.name).join(', ')}) that use it as their backing file` };
  }
  return null;
}
