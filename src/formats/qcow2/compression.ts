/**
 * qcow2 cluster decompression for the reader: raw deflate (qemu calls it "zlib") or zstd. The
 * writer's side is compressor.ts.
 */
import { constants as zc, inflateRawSync } from 'node:zlib';
import { zstdAddon } from '../../io/addons.js';
import type { CompressionType } from './header.js';

/**
 * Decompress one cluster. `src` holds the compressed bytes as the L2 descriptor bounds them (whole
 * sectors, so possibly followed by unrelated bytes). Returns exactly `clusterSize` bytes, or a
 * string saying why that was impossible.
 */
export function decompressCluster(src: Buffer, clusterSize: number, type: CompressionType): Buffer | string {
  return type === 'zstd' ? unzstd(src, clusterSize) : inflate(src, clusterSize);
}

function inflate(src: Buffer, clusterSize: number): Buffer | string {
  let out: Buffer;
  try {
    // Sync flush: a stream that stops short still yields what it produced, so we can report the size.
    // The output cap stops a deflate bomb; qemu's own stream stops at one cluster too.
    out = inflateRawSync(src, { finishFlush: zc.Z_SYNC_FLUSH, maxOutputLength: clusterSize * 2 });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ERR_BUFFER_TOO_LARGE') return 'inflates to more than one cluster';
    return `deflate data is invalid (${(e as Error).message})`;
  }
  if (out.length < clusterSize) return `inflates to ${out.length} bytes instead of ${clusterSize}`;
  // Bytes past one cluster can only come from trailing sector padding decoding as more blocks.
  return out.length === clusterSize ? out : out.subarray(0, clusterSize);
}

function unzstd(src: Buffer, clusterSize: number): Buffer | string {
  const out = Buffer.alloc(clusterSize);
  const dctx = new (zstdAddon().DCtx)();
  let produced = 0;
  let consumed = 0;
  let frameEnded = false;
  // Each call consumes input or produces output; bound the loop anyway.
  for (let guard = 0; produced < clusterSize && guard < 1 << 16; guard++) {
    let r: [number, number, number];
    try {
      r = dctx.decompressStream(out.subarray(produced), src.subarray(consumed));
    } catch (e) {
      // Bytes after a finished frame are the sector padding: the frame was simply too short.
      if (frameEnded) break;
      return `zstd data is invalid (${(e as Error).message})`;
    }
    produced += r[1];
    consumed += r[2];
    frameEnded = r[0] === 0;
    if (r[1] === 0 && r[2] === 0) break;
    if (consumed >= src.length && (frameEnded || r[1] === 0)) break;
  }
  if (produced < clusterSize) return `zstd data decompresses to ${produced} bytes instead of ${clusterSize}`;
  return out;
}
