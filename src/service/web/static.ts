/** Serving the built web UI (dist/web) from the same process: files by exact name, else index.html. */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, extname, join, normalize, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.json': 'application/json',
  '.map': 'application/json',
  '.woff2': 'font/woff2',
};

/** dist/web, whether we run from dist/src/service/web (built) or src/service/web (tsx). */
export function findWebRoot(): string | undefined {
  const here = dirname(fileURLToPath(import.meta.url));
  // Never ../../../web from src/service/web: that is the UI's source folder, not its build.
  for (const c of [resolve(here, '../../../dist/web'), resolve(here, '../../../../dist/web')]) {
    if (existsSync(join(c, 'index.html'))) return c;
  }
  return undefined;
}

export interface StaticFile {
  body: Buffer;
  type: string;
  immutable: boolean;
}

export class StaticFiles {
  private readonly cache = new Map<string, StaticFile>();

  constructor(private readonly root: string | undefined) {}

  get available(): boolean {
    return this.root !== undefined;
  }

  /** The file for a URL path, or index.html for client-side routes; undefined when there is none. */
  lookup(urlPath: string): StaticFile | undefined {
    if (!this.root) return undefined;
    let rel: string;
    try {
      rel = decodeURIComponent(urlPath.split('?')[0]!);
    } catch {
      rel = '/';
    }
    const full = normalize(join(this.root, rel));
    const inside = full.startsWith(this.root + sep);
    let target = join(this.root, 'index.html');
    if (extname(rel)) {
      // A file name: that file or nothing (a missing asset is a 404, not the page).
      if (!inside || !existsSync(full) || !statSync(full).isFile()) return undefined;
      target = full;
    }
    let f = this.cache.get(target);
    if (!f) {
      f = { body: readFileSync(target), type: TYPES[extname(target)] ?? 'application/octet-stream', immutable: target.includes(`${sep}assets${sep}`) };
      this.cache.set(target, f);
    }
    return f;
  }
}
