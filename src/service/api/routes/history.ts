/** /api/history: the job history as time series for charts (space given back, each domain's actual size). */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Service } from '../../service.js';
import { historyQuery } from '../schemas.js';
import { fault as faultBody } from '../docs.js';

const DAY_MS = 86_400_000;
const points = (description: string) => ({ type: 'array', description, items: { type: 'array', items: { type: 'number' }, minItems: 2, maxItems: 2 } });
const history = {
  type: 'object',
  description: 'Time series of [ms since the epoch, bytes] points; a value holds until the next point',
  properties: {
    since: { type: 'integer' },
    now: { type: 'integer' },
    jobs: { type: 'integer', description: 'Finished jobs in the window' },
    reclaimed: points('Bytes given back, summed from `since`, after each finished job that gave something back'),
    domains: {
      type: 'array',
      items: {
        type: 'object',
        properties: {
          id: { type: 'string' },
          name: { type: 'string' },
          actualBytes: { type: 'integer', description: 'Its disks’ actual size now' },
          points: points('Its actual size at `since`, after each job, and now, walked back from now through the jobs’ before and after sizes (what guests wrote between jobs is not in the job history)'),
        },
      },
    },
  },
};

export function historyRoutes(app: FastifyInstance, svc: Service): void {
  app.get(
    '/api/history',
    { schema: { tags: ['history'], summary: "The job history as chart series: space given back, and each domain's actual size", querystring: historyQuery, response: { 200: history, 400: faultBody } } },
    async (req: FastifyRequest<{ Querystring: { days?: string } }>) => {
      const days = Math.min(366, Math.max(1, Number(req.query.days ?? 30)));
      return svc.history(Date.now() - days * DAY_MS);
    },
  );
}
