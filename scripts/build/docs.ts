/**
 * The build's last step (`npm run build:files`): the files generated from sparsify's own tables,
 * written under dist/ where the package ships them from:
 * - dist/man/man1/sparsify.1 and sparsify-serve.1 (package.json's `man` installs them; in a
 *   checkout, MANPATH=dist/man finds them);
 * - dist/completion/sparsify, bash completion for sparsify and virt-sparsify;
 * - dist/build-info.json, the commit for --version.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { VERSION } from '../../src/version.js';
import { sparsifyManPage } from './man-sparsify.js';
import { serveManPage } from './man-serve.js';
import { bashCompletion } from './completion.js';
import { buildInfo } from './build-info.js';

// dist/scripts/build/docs.js: the project is three folders up.
const root = fileURLToPath(new URL('../../../', import.meta.url));
const dist = join(root, 'dist');

function write(rel: string, text: string): void {
  const path = join(dist, rel);
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, text);
}

write('man/man1/sparsify.1', sparsifyManPage(VERSION));
write('man/man1/sparsify-serve.1', serveManPage(VERSION));
write('completion/sparsify', bashCompletion());
write('build-info.json', JSON.stringify(buildInfo(root), null, 2) + '\n');
