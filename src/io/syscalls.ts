/**
 * The few Linux syscalls Node lacks, reached through koffi. Nothing else in the project talks to libc.
 * Every function throws a plain Error carrying the errno name (e.g. 'EOPNOTSUPP') on failure.
 */
import koffi from 'koffi';
import { constants as osConstants } from 'node:os';

const libc = koffi.load('libc.so.6');

const lseekFn = libc.func('int64_t lseek(int fd, int64_t offset, int whence)');
const fallocateFn = libc.func('int fallocate(int fd, int mode, int64_t offset, int64_t len)');
const fcntlFn = libc.func('int fcntl(int fd, int cmd, ...)');
const ioctlFn = libc.func('int ioctl(int fd, unsigned long request, ...)');
const syncFileRangeFn = libc.func('int sync_file_range(int fd, int64_t offset, int64_t nbytes, unsigned int flags)');
const gettidFn = libc.func('int gettid()');

const SEEK_DATA = 3;
const SEEK_HOLE = 4;
const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_PUNCH_HOLE = 0x02;
const F_OFD_GETLK = 36;
const F_OFD_SETLK = 37;
export const F_RDLCK = 0;
export const F_WRLCK = 1;
export const F_UNLCK = 2;
const BLKGETSIZE64 = 0x80081272;
const BLKDISCARD = 0x1277;
const BLKSSZGET = 0x1268;

const errnoNames = new Map<number, string>(
  Object.entries(osConstants.errno).map(([name, num]) => [num as number, name]),
);

export class SyscallError extends Error {
  constructor(
    readonly syscall: string,
    readonly code: string,
    readonly errno: number,
  ) {
    super(`${syscall}: ${code}`);
    this.name = 'SyscallError';
  }
}

function fail(syscall: string): never {
  const e = koffi.errno();
  throw new SyscallError(syscall, errnoNames.get(e) ?? `errno ${e}`, e);
}

/** lseek(SEEK_DATA): the next data offset at or after `offset`, or -1 when only a hole remains (ENXIO). */
export function seekData(fd: number, offset: number): number {
  const r = Number(lseekFn(fd, offset, SEEK_DATA));
  if (r < 0) {
    if (koffi.errno() === osConstants.errno.ENXIO) return -1;
    fail('lseek(SEEK_DATA)');
  }
  return r;
}

/** lseek(SEEK_HOLE): the next hole offset at or after `offset` (the end of file counts as a hole). */
export function seekHole(fd: number, offset: number): number {
  const r = Number(lseekFn(fd, offset, SEEK_HOLE));
  if (r < 0) fail('lseek(SEEK_HOLE)');
  return r;
}

/** fallocate(PUNCH_HOLE | KEEP_SIZE): deallocate [offset, offset+length), keeping the file size. */
export function punchHole(fd: number, offset: number, length: number): void {
  if (fallocateFn(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) !== 0) fail('fallocate(PUNCH_HOLE)');
}

const SYNC_FILE_RANGE_WRITE = 2;

/**
 * Start write-back of [offset, offset+length) without waiting for it, so the final fdatasync
 * has little left to do and disk writes overlap with reading. Failure is harmless: the final
 * fdatasync still makes the data durable.
 */
export function startWriteback(fd: number, offset: number, length: number): void {
  syncFileRangeFn.async(fd, offset, length, SYNC_FILE_RANGE_WRITE, () => undefined);
}

/** struct flock on x86_64/aarch64 Linux: short type, short whence, off_t start, off_t len, pid_t pid. */
const Flock = koffi.struct('flock', {
  l_type: 'int16_t',
  l_whence: 'int16_t',
  l_start: 'int64_t',
  l_len: 'int64_t',
  l_pid: 'int32_t',
});

interface FlockValue {
  l_type: number;
  l_whence: number;
  l_start: number;
  l_len: number;
  l_pid: number;
}

/** Take or release an open-file-description byte-range lock without waiting. Returns false on conflict. */
export function ofdSetLock(fd: number, type: number, start: number, len: number): boolean {
  const fl: FlockValue = { l_type: type, l_whence: 0, l_start: start, l_len: len, l_pid: 0 };
  if (fcntlFn(fd, F_OFD_SETLK, koffi.pointer(Flock), fl) !== 0) {
    const e = koffi.errno();
    if (e === osConstants.errno.EAGAIN || e === osConstants.errno.EACCES) return false;
    fail('fcntl(F_OFD_SETLK)');
  }
  return true;
}

/** Would a lock of `type` on [start, start+len) conflict with a lock held through another description? */
export function ofdTestLock(fd: number, type: number, start: number, len: number): boolean {
  const fl: FlockValue = { l_type: type, l_whence: 0, l_start: start, l_len: len, l_pid: 0 };
  const out = [fl];
  if (fcntlFn(fd, F_OFD_GETLK, koffi.inout(koffi.pointer(Flock)), out) !== 0) fail('fcntl(F_OFD_GETLK)');
  return (out[0] as FlockValue).l_type !== F_UNLCK;
}

/** Size in bytes of a block device. */
export function blockDeviceSize(fd: number): number {
  const out = [0n];
  if (ioctlFn(fd, BLKGETSIZE64, koffi.out(koffi.pointer('uint64_t')), out) !== 0) fail('ioctl(BLKGETSIZE64)');
  return Number(out[0]);
}

/** Logical sector size of a block device. */
export function blockDeviceSectorSize(fd: number): number {
  const out = [0];
  if (ioctlFn(fd, BLKSSZGET, koffi.out(koffi.pointer('int')), out) !== 0) fail('ioctl(BLKSSZGET)');
  return out[0] as number;
}

/** BLKDISCARD over [offset, offset+length) of a block device. */
export function discardBlockDevice(fd: number, offset: number, length: number): void {
  const range = [BigInt(offset), BigInt(length)];
  if (ioctlFn(fd, BLKDISCARD, koffi.pointer('uint64_t'), range) !== 0) fail('ioctl(BLKDISCARD)');
}

/** The calling thread's id (for per-thread scheduling priority: background work runs niced). */
export function gettid(): number {
  return gettidFn() as number;
}
