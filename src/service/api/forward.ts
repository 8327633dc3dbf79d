/**
 * Requests that only another host of the cluster can carry out: a running VM's trim reaches the
 * guest agent through the libvirt that runs the VM, so a host asked to trim another host's VM
 * passes the request on to that host's API (its address as the host registered it), with the
 * caller's own token, and relays the answer: status, body and Location. The answering host is
 * named in X-Sparsify-Host. A forwarded request carries X-Sparsify-Forwarded-By and is never passed
 * on again, so two hosts that disagree about where a VM runs cannot bounce it between them.
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { HostRecord } from '../store/records.js';
import { fault } from './faults.js';

export const FORWARDED_BY = 'x-sparsify-forwarded-by';
export const ANSWERED_BY = 'x-sparsify-host';

/** Was this request passed on by another host already? */
export const wasForwarded = (req: FastifyRequest): boolean => req.headers[FORWARDED_BY] !== undefined;

/** Pass `req` (a POST without a body) on to `target`; a host that is down or does not answer gets a 502 that names it. */
export async function forwardTo(req: FastifyRequest, reply: FastifyReply, target: HostRecord, self: string, timeoutMs: number): Promise<FastifyReply> {
  if (target.status !== 'up' || !target.url) {
    return fault(reply, 409, 'host-unavailable', `the request must run on host ${target.name}, which is ${target.status !== 'up' ? target.status : 'up but has not said where its API listens'}`);
  }
  const headers: Record<string, string> = { [FORWARDED_BY]: self };
  if (req.headers.authorization) headers['authorization'] = req.headers.authorization;
  const token = req.headers['x-sparsify-token'];
  if (typeof token === 'string') headers['x-sparsify-token'] = token;
  let res: Response;
  try {
    res = await fetch(new URL(req.url, target.url), { method: req.method, headers, signal: AbortSignal.timeout(timeoutMs) });
  } catch (e) {
    const why = e instanceof Error && e.name === 'TimeoutError' ? `no answer within ${Math.round(timeoutMs / 1000)} s` : ((e as Error).cause as Error | undefined)?.message ?? (e as Error).message;
    return fault(reply, 502, 'host-unreachable', `the request must run on host ${target.name}, whose API at ${target.url} could not be reached: ${why}`);
  }
  const body = await res.text();
  const location = res.headers.get('location');
  if (location) reply.header('location', location);
  reply.header(ANSWERED_BY, res.headers.get(ANSWERED_BY) ?? target.name);
  return reply.code(res.status).type(res.headers.get('content-type') ?? 'application/json').send(body);
}
