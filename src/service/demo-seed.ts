/**
 * `serve --seed-demo`: put the embedded demo disk (examples/demo-disk.img.gz) into an empty
 * domain, so a first start shows a disk worth sparsifying.
 */
import { createReadStream, createWriteStream, existsSync, mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { fileURLToPath } from 'node:url';
import { SparsifyError } from '../io/errors.js';

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
  // The npm package leaves it out (680 KiB that no hypervisor needs): it is in the source tree.
  if (!archive) throw new SparsifyError('--seed-demo: the demo disk (examples/demo-disk.img.gz) comes with the source tree, not with the npm package; run it from a checkout (npm start)');
  const out = join(domain, 'demo-disk.img');
  await pipeline(createReadStream(archive), createGunzip(), createWriteStream(out, { flags: 'wx' }));
  return out;
}
