/**
 * The service token: `Authorization: Bearer TOKEN` (or X-Sparsify-Token), compared in constant
 * time. Calls that change anything always need it. When the service listens beyond localhost,
 * reads need it too: every route but the health check, the API's documentation and the web UI's
 * own files (they hold no data; the UI then calls the API with the token). /metrics also takes the
 * read-only metrics token that Prometheus scrapers are given.
 */
import { timingSafeEqual } from 'node:crypto';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { fault } from './faults.js';

export function tokenOk(given: string | undefined, token: string | undefined): boolean {
  if (!given || !token) return false;
  const a = Buffer.from(given);
  const b = Buffer.from(token);
  return a.length === b.length && timingSafeEqual(a, b);
}

export function givenToken(req: FastifyRequest): string | undefined {
  const h = req.headers.authorization;
  return h?.startsWith('Bearer ') ? h.slice(7).trim() : (req.headers['x-sparsify-token'] as string | undefined);
}

const NEED_TOKEN = 'this call needs the service token: Authorization: Bearer TOKEN (printed at first start, kept in the data folder)';

/** A preHandler for calls that change anything. */
export function requireToken(token: string) {
  return async (req: FastifyRequest, reply: FastifyReply) => {
    if (!tokenOk(givenToken(req), token)) return fault(reply, 401, 'token-required', NEED_TOKEN);
  };
}

const PUBLIC = /^\/api\/(health|docs)(\/|$|\?)/;

/** An onRequest hook for a service reachable from the network: reads need the token too. */
export function readGuard(token: string, metricsToken: string | undefined) {
  return async (req: FastifyRequest, reply: FastifyReply) => {
    const path = req.url;
    const api = path === '/api' || path.startsWith('/api/') || path === '/api?';
    const metrics = path === '/metrics' || path.startsWith('/metrics?');
    if ((!api && !metrics) || PUBLIC.test(path)) return;
    const given = givenToken(req);
    if (tokenOk(given, token) || (metrics && tokenOk(given, metricsToken))) return;
    return fault(reply, 401, 'token-required', metrics ? `${NEED_TOKEN}, or the metrics token` : NEED_TOKEN);
  };
}
