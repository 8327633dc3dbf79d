/**
 * `npm start`: unpack the embedded demo disk (or use the image given as argument), show its disk
 * map, sparsify it in copy mode, and show what the host got back. Uses the real CLI.
 */
import { createReadStream, createWriteStream, mkdtempSync, statSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';

const root = join(fileURLToPath(new URL('.', import.meta.url)), '..', '..');
const cli = join(root, 'bin', 'sparsify.js');

function sparsify(args: string[]): number {
  return spawnSync(process.execPath, [cli, ...args], { stdio: 'inherit' }).status ?? 1;
}

const mib = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;

async function main(): Promise<number> {
  const work = mkdtempSync(join(tmpdir(), 'sparsify-demo-'));
  let input = process.argv[2];
  if (!input) {
    input = join(work, 'demo-disk.img');
    await pipeline(createReadStream(join(root, 'examples', 'demo-disk.img.gz')), createGunzip(), createWriteStream(input));
    console.log(`Unpacked the embedded demo disk to ${input}\n`);
  }
  const output = join(work, 'sparse.img');
  if (sparsify(['--analyze', input]) !== 0) return 1;
  console.log('');
  if (sparsify([input, output]) !== 0) return 1;
  const before = statSync(input).blocks * 512;
  const after = statSync(output).blocks * 512;
  console.log(`\nHost space: ${mib(before)} before, ${mib(after)} after (${mib(before - after)} given back).`);
  console.log(`Output: ${output}`);
  return 0;
}

main().then((c) => process.exit(c), (e: unknown) => {
  console.error(e instanceof Error ? e.message : String(e));
  process.exit(1);
});
