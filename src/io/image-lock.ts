/**
 * QEMU-compatible image locks. QEMU marks each permission it holds by a shared OFD lock on byte
 * 100 + bit, and each permission it refuses to share on byte 200 + bit. Taking the same locks
 * lets us see a running VM's disk, and lets QEMU see us.
 */
import * as sys from './syscalls.js';
import { SparsifyError } from './errors.js';

const PERM_BASE = 100;
const SHARED_BASE = 200;

export const Perm = {
  CONSISTENT_READ: 0,
  WRITE: 1,
  WRITE_UNCHANGED: 2,
  RESIZE: 3,
} as const;
const ALL_PERMS = [Perm.CONSISTENT_READ, Perm.WRITE, Perm.WRITE_UNCHANGED, Perm.RESIZE];

export interface LockRequest {
  /** Permissions we use. */
  perms: number[];
  /** Permissions we refuse to share with others. */
  unshared: number[];
}

/** Reading a source while forbidding writers (what qemu-img convert does without -U). */
export const READ_LOCK: LockRequest = { perms: [Perm.CONSISTENT_READ], unshared: [Perm.WRITE, Perm.RESIZE] };
/** Modifying an image in place: nobody else may write or resize, and nobody may rely on reading it. */
export const WRITE_LOCK: LockRequest = {
  perms: [Perm.CONSISTENT_READ, Perm.WRITE, Perm.WRITE_UNCHANGED],
  unshared: [Perm.CONSISTENT_READ, Perm.WRITE, Perm.RESIZE],
};

const PERM_NAMES = ['consistent read', 'write', 'write unchanged', 'resize'];

/**
 * Check for conflicting holders, then take the locks. Throws a clear error naming the conflict
 * (most often: a running VM has the image open for writing). The locks last until the fd closes.
 */
export function acquireImageLock(fd: number, path: string, req: LockRequest): string | undefined {
  try {
    takeLocks(fd, path, req);
  } catch (e) {
    // Some host filesystems (old NFS) have no OFD locks; QEMU then runs unlocked too, with a warning.
    if (e instanceof sys.SyscallError) return `${path}: image locking is not available on this filesystem (${e.code}); running without locks`;
    throw e;
  }
  return undefined;
}

function takeLocks(fd: number, path: string, req: LockRequest): void {
  const conflicts: string[] = [];
  // Someone refuses to share a permission we want.
  for (const p of req.perms) {
    if (sys.ofdTestLock(fd, sys.F_WRLCK, SHARED_BASE + p, 1)) conflicts.push(`another process does not share the ${PERM_NAMES[p]} permission`);
  }
  // Someone holds a permission we refuse to share.
  for (const p of req.unshared) {
    if (sys.ofdTestLock(fd, sys.F_WRLCK, PERM_BASE + p, 1)) conflicts.push(`another process holds the ${PERM_NAMES[p]} permission`);
  }
  if (conflicts.length) {
    const writing = req.unshared.includes(Perm.WRITE) && conflicts.some((c) => c.includes('holds the write'));
    throw new SparsifyError(
      writing
        ? `${path}: the image is in use: another process (a running VM?) has it open for writing (${conflicts.join('; ')})`
        : `${path}: the image is locked by another process (${conflicts.join('; ')})`,
    );
  }
  for (const p of ALL_PERMS) {
    if (req.perms.includes(p) && !sys.ofdSetLock(fd, sys.F_RDLCK, PERM_BASE + p, 1)) throw new SparsifyError(`${path}: failed to lock the image (a process took it meanwhile)`);
    if (req.unshared.includes(p) && !sys.ofdSetLock(fd, sys.F_RDLCK, SHARED_BASE + p, 1)) throw new SparsifyError(`${path}: failed to lock the image (a process took it meanwhile)`);
  }
}
