/** The service token: `Authorization: Bearer TOKEN` (or X-Sparsify-Token), compared in constant time. */
import { timingSafeEqual } from 'node:crypto';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { fault } from './faults.js';

export function tokenOk(given: string | undefined, token: string): boolean {
  if (!given) return false;
  const a = Buffer.from(given);
  const b = Buffer.from(token);
  return a.length === b.length && timingSafeEqual(a, b);
}

export function givenToken(req: FastifyRequest): string | undefined {
  const h = req.headers.authorization;
  return h?.startsWith('Bearer ') ? h.slice(7).trim() : (req.headers['x-sparsify-token'] as string | undefined);
}

/** A preHandler for calls that change anything. */
export function requireToken(token: string) {
  return async (req: FastifyRequest, reply: FastifyReply) => {
    if (!tokenOk(givenToken(req), token)) return fault(reply, 401, 'token-required', 'this call needs the service token: Authorization: Bearer TOKEN (printed at first start, kept in the data folder)');
  };
}
