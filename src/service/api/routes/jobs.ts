/** /api/jobs: jobs of every host, one job and its attempts, and cancel (heard by whichever host runs it). */
import type { FastifyInstance, FastifyRequest, preHandlerHookHandler } from 'fastify';
import type { Service } from '../../service.js';
import type { JobStatus } from '../../store/records.js';
import { idParams, jobsQuery } from '../schemas.js';
import { fault as faultBody, listOf, one, secured } from '../docs.js';
import { fault, refuse } from '../faults.js';

const tags = ['jobs'];

export function jobRoutes(app: FastifyInstance, svc: Service, auth: preHandlerHookHandler): void {
  app.get(
    '/api/jobs',
    { schema: { tags, summary: 'List jobs of every host, newest first', querystring: jobsQuery, response: { 200: listOf('jobs', 'Job', '{"jobs": [Job]}'), 400: faultBody } } },
    async (req: FastifyRequest<{ Querystring: { status?: string; diskId?: string; limit?: string } }>) => ({
      jobs: await svc.listJobs({
        status: req.query.status?.split(',') as JobStatus[] | undefined,
        diskId: req.query.diskId,
        limit: req.query.limit ? Math.max(1, Number(req.query.limit)) : 200,
      }),
    }),
  );

  app.get(
    '/api/jobs/:id',
    { schema: { tags, summary: 'One job with its steps, progress and host', params: idParams, response: { 200: one('job', 'Job', '{"job": Job}'), 400: faultBody, 404: faultBody } } },
    async (req: FastifyRequest<{ Params: { id: string } }>, reply) => {
      const j = await svc.getJob(req.params.id);
      return j ? { job: svc.jobView(j) } : fault(reply, 404, 'job-not-found', 'no such job');
    },
  );

  app.get(
    '/api/jobs/:id/attempts',
    { schema: { tags, summary: "A job's attempts: which host ran it when, and how each ended (takeovers show here)", params: idParams, response: { 200: listOf('attempts', 'Attempt', '{"attempts": [Attempt]}'), 404: faultBody } } },
    async (req: FastifyRequest<{ Params: { id: string } }>, reply) => {
      const j = await svc.getJob(req.params.id);
      return j ? { attempts: await svc.store.jobs.attempts({ jobId: j.id }) } : fault(reply, 404, 'job-not-found', 'no such job');
    },
  );

  app.post(
    '/api/jobs/:id/cancel',
    {
      schema: {
        tags,
        summary: 'Cancel a pending or running job, wherever it runs (it stops between ranges; the disk stays consistent and is unlocked)',
        security: secured,
        params: idParams,
        response: { 202: one('job', 'Job', '{"job": Job}'), 401: faultBody, 404: faultBody, 409: faultBody },
      },
      preHandler: auth,
    },
    async (req: FastifyRequest<{ Params: { id: string } }>, reply) => {
      const r = await svc.cancel(req.params.id);
      return 'refusal' in r ? refuse(reply, r.refusal) : reply.code(202).send({ job: r.job });
    },
  );
}
