/** The version of this sparsify, from its package.json (two folders up from src/service, three from dist/src/service). */
import { createRequire } from 'node:module';

function readVersion(): string {
  const req = createRequire(import.meta.url);
  for (const p of ['../../package.json', '../../../package.json']) {
    try {
      const pkg = req(p) as { name?: string; version: string };
      if (pkg.name === 'sparsify') return pkg.version;
    } catch {
      // try the next
    }
  }
  return '0.0.0';
}

export const VERSION = readVersion();
