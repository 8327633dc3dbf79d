/**
 * Conditional GETs for list answers: the ETag names the body, and a client that already holds it
 * (If-None-Match) gets 304 without it. Pages and totals are small, so their tag is a hash of the
 * body itself; a streamed whole list is tagged before it is read, by what the host has seen
 * change (see DiskList.generation).
 */
import { createHash } from 'node:crypto';
import type { FastifyReply, FastifyRequest } from 'fastify';

export const bodyTag = (body: string): string => `"${createHash('sha1').update(body).digest('base64url')}"`;

/** Does the client hold this version already? */
export function fresh(req: FastifyRequest, tag: string): boolean {
  const h = req.headers['if-none-match'];
  if (!h) return false;
  const bare = (t: string) => t.trim().replace(/^W\//, '');
  return h.split(',').some((t) => t.trim() === '*' || bare(t) === bare(tag));
}

/** A JSON body with its ETag, or 304 when the client has it. */
export function sendTagged(req: FastifyRequest, reply: FastifyReply, body: string): FastifyReply {
  const tag = bodyTag(body);
  reply.header('etag', tag).header('cache-control', 'no-cache');
  if (fresh(req, tag)) return reply.code(304).send();
  return reply.type('application/json; charset=utf-8').send(body);
}
