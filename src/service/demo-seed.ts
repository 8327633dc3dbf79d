/**
 * `serve --seed-demo`: put the embedded demo disk (examples/demo-disk.img.gz) into an empty
 * domain, so a first start shows a disk worth sparsifying.
 */
import { createReadStream, createWriteStream, existsSync, mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { fileURLToPath } from 'node:url';

function demoArchive(): string | undefined {
  const here = fileURLToPath(new URL('.', import.meta.url));
  // dist/src/service (built) or src/service (source)
  for (const up of [['..', '..', '..'], ['..', '..']]) {
    const p = join(here, ...up, 'examples', 'demo-disk.img.gz');
    if (existsSync(p)) return p;
  }
  return undefined;
}

/** Returns the path of the seeded disk, or undefined when the domain already had files. */
export async function seedDemoDisk(domain: string): Promise<string | undefined> {
  mkdirSync(domain, { recursive: true });
  if (readdirSync(domain).some((f) => !f.startsWith('.'))) return undefined;
  const archive = demoArchive();
  if (!archive) throw new Error('the embedded demo disk (examples/demo-disk.img.gz) is missing');
  const out = join(domain, 'demo-disk.img');
  await pipeline(createReadStream(archive), createGunzip(), createWriteStream(out, { flags: 'wx' }));
  return out;
}
