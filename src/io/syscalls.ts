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
const copyFileRangeFn = libc.func(
  'int64_t copy_file_range(int fd_in, _Inout_ int64_t *off_in, int fd_out, _Inout_ int64_t *off_out, size_t len, unsigned int flags)',
);
/** struct file_clone_range, the argument of FICLONERANGE. */
const FileCloneRange = koffi.struct('file_clone_range', {
  src_fd: 'int64_t',
  src_offset: 'uint64_t',
  src_length: 'uint64_t',
  dest_offset: 'uint64_t',
});
// ioctl is variadic; FICLONERANGE always passes one pointer, so a fixed prototype can run on a worker thread.
const ioctlCloneFn = libc.func('ioctl', 'int', ['int', 'unsigned long', koffi.pointer(FileCloneRange)]);
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
/** _IOW(0x94, 13, struct file_clone_range) */
const FICLONERANGE = 0x4020940d;

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

function errorFor(syscall: string, e: number): SyscallError {
  return new SyscallError(syscall, errnoNames.get(e) ?? `errno ${e}`, e);
}

function fail(syscall: string): never {
  throw errorFor(syscall, koffi.errno());
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

/**
 * FICLONERANGE: make [destOffset, destOffset+length) of `destFd` share the blocks of
 * [srcOffset, srcOffset+length) of `srcFd` (a reflink). Offsets and length must be multiples of the
 * filesystem block (length may end at the source's end of file). Runs on a worker thread.
 */
export function cloneRange(srcFd: number, srcOffset: number, destFd: number, destOffset: number, length: number): Promise<void> {
  const arg = { src_fd: srcFd, src_offset: srcOffset, src_length: length, dest_offset: destOffset };
  return new Promise((resolve, reject) => {
    ioctlCloneFn.async(destFd, FICLONERANGE, arg, (err: unknown, r: number) => {
      if (err) reject(err);
      else if (r !== 0) reject(errorFor('ioctl(FICLONERANGE)', koffi.errno()));
      else resolve();
    });
  });
}

/**
 * copy_file_range: the kernel copies [srcOffset, srcOffset+length) of `srcFd` to `destOffset` of
 * `destFd` without a trip through user space (and shares blocks where the filesystem can). Runs on
 * a worker thread; loops over short copies; stopping at the source's end of file is an error.
 */
export async function copyFileRange(srcFd: number, srcOffset: number, destFd: number, destOffset: number, length: number): Promise<void> {
  let done = 0;
  while (done < length) {
    const n = await new Promise<number>((resolve, reject) => {
      copyFileRangeFn.async(srcFd, [srcOffset + done], destFd, [destOffset + done], length - done, 0, (err: unknown, r: number | bigint) => {
        if (err) reject(err);
        else if (Number(r) < 0) reject(errorFor('copy_file_range', koffi.errno()));
        else resolve(Number(r));
      });
    });
    if (n === 0) throw errorFor('copy_file_range', osConstants.errno.EINVAL);
    done += n;
  }
}

/** The calling thread's id (for per-thread scheduling priority: background work runs niced). */
export function gettid(): number {
  return gettidFn() as number;
}
