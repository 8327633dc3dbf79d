/**
 * What Linux says about a block device's discard support, from sysfs: `queue/discard_max_bytes`
 * (0: the device cannot discard), `queue/discard_granularity`, and for SCSI disks
 * `device/scsi_disk/<h:c:t:l>/provisioning_mode` (full, unmap, writesame_16, ...). A partition's
 * queue is its disk's.
 */
import { readFileSync, readdirSync } from 'node:fs';

export interface DeviceDiscardInfo {
  /** Largest single discard; 0 when the device cannot discard; undefined when sysfs does not say. */
  maxBytes?: number;
  /** The unit discards work in (0 or undefined: not said). */
  granularity?: number;
  /** SCSI thin-provisioning mode, where the device is a SCSI disk. */
  provisioningMode?: string;
}

/** Major and minor numbers of a device number (glibc's encoding). */
export function devNumbers(rdev: number): { major: number; minor: number } {
  const major = Math.floor(rdev / 256) & 0xfff;
  const minor = (rdev & 0xff) | ((Math.floor(rdev / 2 ** 20) & 0xfff) << 8);
  return { major, minor };
}

function readText(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return undefined;
  }
}

/** The device's own sysfs folder, then its parent disk's (a partition has no queue of its own). */
function sysfsDirs(rdev: number): string[] {
  const { major, minor } = devNumbers(rdev);
  const base = `/sys/dev/block/${major}:${minor}`;
  return [base, `${base}/..`];
}

function queueNumber(rdev: number, name: string): number | undefined {
  for (const dir of sysfsDirs(rdev)) {
    const v = readText(`${dir}/queue/${name}`);
    if (v !== undefined && Number.isFinite(Number(v))) return Number(v);
  }
  return undefined;
}

function provisioningMode(rdev: number): string | undefined {
  for (const dir of sysfsDirs(rdev)) {
    let entries: string[];
    try {
      entries = readdirSync(`${dir}/device/scsi_disk`);
    } catch {
      continue;
    }
    for (const e of entries) {
      const v = readText(`${dir}/device/scsi_disk/${e}/provisioning_mode`);
      if (v) return v;
    }
  }
  return undefined;
}

export function deviceDiscardInfo(rdev: number): DeviceDiscardInfo {
  return {
    maxBytes: queueNumber(rdev, 'discard_max_bytes'),
    granularity: queueNumber(rdev, 'discard_granularity'),
    provisioningMode: provisioningMode(rdev),
  };
}
