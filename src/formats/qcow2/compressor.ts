/**
 * Compressing qcow2 clusters on every core without worker threads (each costs a JavaScript heap of
 * its own, ~50 MiB): deflate through Node's asynchronous zlib, and zstd through libzstd called with
 * koffi, both of which run on libuv's thread pool. Memory is then a few hundred KiB of compressor
 * state per cluster in flight, and the caller bounds how many are in flight.
 */
import { constants as zc, deflateRaw } from 'node:zlib';
import koffi from 'koffi';
import { zstdAddon } from '../../io/addons.js';
import type { CompressionType } from './header.js';

/** zstd level qemu uses. */
const ZSTD_LEVEL = 3;

type NativeFunction = ReturnType<ReturnType<typeof koffi.load>['func']>;

interface LibZstd {
  compress: NativeFunction;
  isError: NativeFunction;
}

let libzstd: LibZstd | null | undefined;

/** libzstd from the system (Debian's dpkg itself needs it); null when it cannot be loaded. */
function loadZstd(): LibZstd | null {
  if (libzstd !== undefined) return libzstd;
  try {
    const lib = koffi.load('libzstd.so.1');
    libzstd = {
      compress: lib.func('size_t ZSTD_compress(void *dst, size_t dstCapacity, const void *src, size_t srcSize, int level)'),
      isError: lib.func('unsigned int ZSTD_isError(size_t code)'),
    };
  } catch {
    libzstd = null;
  }
  return libzstd;
}

function deflateCluster(src: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    // qemu inflates with a 4 KiB window (windowBits -12), so streams must not reach further back.
    deflateRaw(src, { windowBits: 12, memLevel: 9, level: zc.Z_DEFAULT_COMPRESSION }, (err, out) => (err ? reject(err) : resolve(out)));
  });
}

function zstdCluster(src: Buffer): Promise<Buffer> {
  const zstd = zstdAddon();
  const dst = Buffer.allocUnsafe(zstd.compressBound(src.length));
  const lib = loadZstd();
  if (!lib) {
    // Without the system library: the addon's synchronous call, on this thread.
    return Promise.resolve(dst.subarray(0, zstd.compress(dst, src, ZSTD_LEVEL)));
  }
  return new Promise((resolve, reject) => {
    lib.compress.async(dst, dst.length, src, src.length, ZSTD_LEVEL, (err: unknown, n: number | bigint) => {
      if (err) return reject(err);
      if (lib.isError(n)) return reject(new Error('zstd: compression failed'));
      resolve(dst.subarray(0, Number(n)));
    });
  });
}

/**
 * Compress one cluster as qemu does, on the thread pool. `src` must stay untouched until this
 * settles. Resolves undefined when compression does not shrink it (qemu then stores it as is).
 */
export async function compressClusterAsync(src: Buffer, type: CompressionType): Promise<Buffer | undefined> {
  const out = type === 'zstd' ? await zstdCluster(src) : await deflateCluster(src);
  return out.length < src.length ? out : undefined;
}
