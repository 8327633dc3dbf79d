/**
 * Every refusal is `{fault: {reason, detail, code}}` with a 4xx status; `code` is a stable word a
 * client can switch on. The database being away is a 503 `database-unavailable`, never a 500.
 */
import type { FastifyInstance, FastifyReply } from 'fastify';
import type { Refusal } from '../jobs/validate.js';
import { isUnavailable } from '../store/db.js';

const REASONS: Record<number, string> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  404: 'Not Found',
  409: 'Conflict',
  413: 'Payload Too Large',
  415: 'Unsupported Media Type',
  500: 'Internal Server Error',
  503: 'Service Unavailable',
};

export function fault(reply: FastifyReply, status: number, code: string, detail: string): FastifyReply {
  return reply.code(status).send({ fault: { reason: REASONS[status] ?? 'Error', detail, code } });
}

export function refuse(reply: FastifyReply, r: Refusal): FastifyReply {
  return fault(reply, r.status, r.code, r.detail);
}

type RouteError = Error & { statusCode?: number; validation?: unknown; validationContext?: string; code?: string };

export function installErrorHandler(app: FastifyInstance): void {
  app.setErrorHandler((err: RouteError, req, reply) => {
    if (err.validation) return fault(reply, 400, 'invalid-request', `${err.validationContext ?? 'request'} ${err.message.replace(/^(body|params|querystring)\s*/, '')}`);
    if (isUnavailable(err)) {
      reply.header('retry-after', '2');
      return fault(reply, 503, 'database-unavailable', 'the database is unavailable right now; running jobs go on and the service reconnects by itself, try again shortly');
    }
    const status = err.statusCode && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 500;
    if (status === 500) req.log.error({ err }, `internal error on ${req.method} ${req.url}`);
    return fault(reply, status, status === 500 ? 'internal-error' : (err.code ?? 'bad-request'), status === 500 ? 'internal error (see the service log)' : err.message);
  });
}
