/**
 * The anti-forensic splitter's merge (LUKS1 specification, "AF-Splitter"): a key of n bytes is
 * stored as `stripes` blocks of n bytes; the key is
 *   d = 0; for each block s_i but the last: d = H(d xor s_i); key = d xor s_last
 * where H, the diffusion, hashes each digest-sized piece j of its input as hash(be32(j) || piece)
 * and keeps as many bytes as the piece had.
 */
import { createHash } from 'node:crypto';

function diffuse(block: Buffer, hash: string): void {
  const digestSize = createHash(hash).digest().length;
  const index = Buffer.alloc(4);
  for (let j = 0, at = 0; at < block.length; j++, at += digestSize) {
    const piece = block.subarray(at, Math.min(at + digestSize, block.length));
    index.writeUInt32BE(j);
    const d = createHash(hash).update(index).update(piece).digest();
    d.copy(piece, 0, 0, piece.length);
    d.fill(0);
  }
}

/** Merge AF-split material (`stripes` blocks of `keySize` bytes) into the key; the caller zeroes both. */
export function afMerge(material: Buffer, keySize: number, stripes: number, hash: string): Buffer {
  const d = Buffer.alloc(keySize);
  for (let i = 0; i < stripes; i++) {
    const s = material.subarray(i * keySize, (i + 1) * keySize);
    for (let b = 0; b < keySize; b++) d[b]! ^= s[b]!;
    if (i < stripes - 1) diffuse(d, hash);
  }
  return d;
}
