/**
 * Serving the built web UI (dist/web) from the same process, with @fastify/static: each built file
 * by its name (hashed assets cached for good, the page never), and the page itself for the UI's
 * own routes.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance } from 'fastify';
import fastifyStatic from '@fastify/static';

/** dist/web, whether we run from dist/src/service/web (built) or src/service/web (tsx). */
export function findWebRoot(): string | undefined {
  const here = dirname(fileURLToPath(import.meta.url));
  // Never ../../../web from src/service/web: that is the UI's source folder, not its build.
  for (const c of [resolve(here, '../../../dist/web'), resolve(here, '../../../../dist/web')]) {
    if (existsSync(join(c, 'index.html'))) return c;
  }
  return undefined;
}

/** Register the UI's files; returns the page to serve for the UI's own routes, or undefined when the UI is not built. */
export async function serveWebUi(app: FastifyInstance): Promise<Buffer | undefined> {
  const root = findWebRoot();
  if (!root) return undefined;
  await app.register(fastifyStatic, {
    root,
    prefix: '/',
    // One route per built file, found at start; anything else falls to the not-found handler.
    wildcard: false,
    decorateReply: false,
    setHeaders: (res, path) => res.setHeader('cache-control', path.includes(`${sep}assets${sep}`) ? 'public, max-age=31536000, immutable' : 'no-cache'),
  });
  return readFileSync(join(root, 'index.html'));
}
