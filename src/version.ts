/**
 * Which sparsify this is: the version from package.json, and the commit the build was made from
 * (dist/build-info.json, written by `npm run build`; absent when running from the sources).
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

interface BuildInfo {
  /** Short commit id, with -dirty when the tree had uncommitted changes; 'unknown' outside git. */
  commit: string;
}

/** A JSON file at `rel` from this module's folder (dist/src or src); undefined when absent. */
function readJson<T>(...rels: string[]): T | undefined {
  for (const rel of rels) {
    try {
      return JSON.parse(readFileSync(fileURLToPath(new URL(rel, import.meta.url)), 'utf8')) as T;
    } catch {
      // try the next layout
    }
  }
  return undefined;
}

// dist/src/version.js is two folders below package.json, src/version.ts one.
const pkg = readJson<{ name?: string; version?: string }>('../../package.json', '../package.json');
const build = readJson<BuildInfo>('../build-info.json');

export const VERSION: string = pkg?.name === 'sparsify' && pkg.version ? pkg.version : '0.0.0';
export const COMMIT: string = build?.commit ?? 'unknown';

/** `sparsify 0.1.0 (commit 1a2b3c4d5e6f)`: what --version prints after the program's name. */
export function versionLine(prog: string): string {
  return `${prog} ${VERSION} (commit ${COMMIT})`;
}
