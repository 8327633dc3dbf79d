/**
 * One `sparsify serve` per data folder: an exclusive lock on DATA_DIR/serve.lock, held for the
 * life of the process and released by the kernel when it dies, however it dies. It tells a live
 * process from a crashed one, so a host restarted after a crash gets its name back at once.
 */
import { openSync, closeSync, writeSync, ftruncateSync } from 'node:fs';
import { join } from 'node:path';
import * as sys from '../../io/syscalls.js';

export class DataDirInUseError extends Error {}

export class DataDirLock {
  private constructor(private fd: number | undefined) {}

  static acquire(dataDir: string): DataDirLock {
    const path = join(dataDir, 'serve.lock');
    const fd = openSync(path, 'a+', 0o600);
    let ok: boolean;
    try {
      ok = sys.ofdSetLock(fd, sys.F_WRLCK, 0, 1);
    } catch {
      // No OFD locks on this filesystem: nothing to learn from it.
      return new DataDirLock(fd);
    }
    if (!ok) {
      closeSync(fd);
      throw new DataDirInUseError(`another sparsify serve is using the data folder ${dataDir} (it holds ${path}); stop it, or give this one its own --data-dir`);
    }
    ftruncateSync(fd, 0);
    writeSync(fd, `${process.pid}\n`);
    return new DataDirLock(fd);
  }

  release(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }
}
