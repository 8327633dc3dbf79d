/**
 * Opening an image: pick the format (an explicit --format always wins; otherwise by magic),
 * and open backing files by the same rules, with loop and depth checks.
 */
import { dirname, resolve, isAbsolute } from 'node:path';
import { realpathSync } from 'node:fs';
import { BlockFile } from '../io/file.js';
import { NbdFile } from '../io/nbd/nbd-file.js';
import { isNbdUri } from '../io/nbd/uri.js';
import { acquireImageLock, READ_LOCK, WRITE_LOCK } from '../io/image-lock.js';
import { SparsifyError } from '../io/errors.js';
import { RawImage } from './raw.js';
import { formatDrivers, findDriver } from './registry.js';
import type { DiskImage, OpenContext } from './types.js';

/** No sane chain is deeper than this; a deeper one is almost certainly a loop through distinct names. */
export const MAX_CHAIN_DEPTH = 64;
const PROBE_BYTES = 64 * 1024;

export interface OpenOptions {
  /** Input format; when given, the content is never interpreted as another format. */
  format?: string;
  /** QEMU image locks to take on the top layer (backing files always get read locks). Default: read. */
  lock?: 'read' | 'write' | 'none';
  /** Open the top layer for writing (in-place mode). */
  writable?: boolean;
  /** Receives non-fatal remarks (e.g. locking unavailable). */
  warn?: (msg: string) => void;
  /** Called with the top layer's file once open (in place over NBD measures allocation through it). */
  onTopFile?: (file: BlockFile) => void;
}

/** Detect the format of an open file by its magic; raw when nothing matches. */
export async function probeFormat(file: BlockFile): Promise<string> {
  const head = Buffer.alloc(Math.min(PROBE_BYTES, file.size));
  await file.readExact(head, 0, 'header');
  for (const d of formatDrivers()) if (d.name !== 'raw' && d.probe(head)) return d.name;
  return 'raw';
}

class ChainOpener implements OpenContext {
  private readonly opened: string[] = [];

  constructor(private readonly opts: OpenOptions) {}

  async open(path: string, format: string | undefined): Promise<DiskImage> {
    let real: string;
    const nbd = isNbdUri(path);
    try {
      real = nbd ? path : realpathSync(path);
    } catch (e) {
      throw new SparsifyError(`cannot open ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    if (this.opened.includes(real)) {
      throw new SparsifyError(`backing chain loops: ${[...this.opened, real].join(' -> ')}`);
    }
    if (this.opened.length >= MAX_CHAIN_DEPTH) {
      throw new SparsifyError(`backing chain of ${path} is deeper than ${MAX_CHAIN_DEPTH} layers`);
    }
    const top = this.opened.length === 0;
    this.opened.push(real);
    const mode = top && this.opts.writable ? 'r+' : 'r';
    const file = nbd ? await NbdFile.openAddress(path, mode) : await BlockFile.open(path, mode);
    try {
      // An export has no host lock: the server decides who may connect.
      if (top) this.opts.onTopFile?.(file);
      const lock = nbd ? 'none' : top ? (this.opts.lock ?? 'read') : 'read';
      if (lock !== 'none') {
        const warning = acquireImageLock(file.fd, path, lock === 'write' ? WRITE_LOCK : READ_LOCK);
        if (warning) this.opts.warn?.(warning);
      }
      const name = format ?? (await probeFormat(file));
      if (name === 'raw') return await RawImage.open(file);
      const driver = findDriver(name);
      if (!driver) throw new SparsifyError(`${file.path}: input format '${name}' is not supported yet`);
      return await driver.open(file, this);
    } catch (e) {
      await file.close().catch(() => undefined);
      throw e;
    }
  }

  openBacking(path: string, format: string | undefined, referrer: string): Promise<DiskImage> {
    if (isNbdUri(referrer) && !isNbdUri(path)) {
      return Promise.reject(new SparsifyError(`${referrer}: the image has a backing file (${path}), which cannot be reached through the export; serve the guest's view instead (qemu-nbd -f FORMAT), or open the image as a file`));
    }
    const full = isAbsolute(path) ? path : resolve(dirname(referrer), path);
    return this.open(full, format).catch((e: unknown) => {
      if (e instanceof SparsifyError) throw new SparsifyError(`backing file of ${referrer}: ${e.message}`);
      throw e;
    });
  }
}

export async function openImage(path: string, opts: OpenOptions = {}): Promise<DiskImage> {
  if (opts.format !== undefined && opts.format !== 'raw' && !findDriver(opts.format)) {
    throw new SparsifyError(`input format '${opts.format}' is not supported yet (supported: ${formatDrivers().map((d) => d.name).join(', ')})`);
  }
  return new ChainOpener(opts).open(path, opts.format);
}
