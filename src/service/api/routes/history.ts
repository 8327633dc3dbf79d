/** /api/history: the job history as time series for charts (space given back, each domain's actual size). */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Service } from '../../service.js';
import { historyQuery } from '../schemas.js';

const DAY_MS = 86_400_000;

export function historyRoutes(app: FastifyInstance, svc: Service): void {
  app.get('/api/history', { schema: { querystring: historyQuery } }, async (req: FastifyRequest<{ Querystring: { days?: string } }>) => {
    const days = Math.min(366, Math.max(1, Number(req.query.days ?? 30)));
    return svc.history(Date.now() - days * DAY_MS);
  });
}
