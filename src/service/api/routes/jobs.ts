/** /api/jobs: jobs of every host, one job, and cancel (heard by whichever host runs it). */
import type { FastifyInstance, FastifyRequest, preHandlerHookHandler } from 'fastify';
import type { Service } from '../../service.js';
import type { JobStatus } from '../../store/records.js';
import { idParams, jobsQuery } from '../schemas.js';
import { fault, refuse } from '../faults.js';

export function jobRoutes(app: FastifyInstance, svc: Service, auth: preHandlerHookHandler): void {
  app.get('/api/jobs', { schema: { querystring: jobsQuery } }, async (req: FastifyRequest<{ Querystring: { status?: string; diskId?: string; limit?: string } }>) => ({
    jobs: await svc.listJobs({
      status: req.query.status?.split(',') as JobStatus[] | undefined,
      diskId: req.query.diskId,
      limit: req.query.limit ? Math.max(1, Number(req.query.limit)) : 200,
    }),
  }));

  app.get('/api/jobs/:id', { schema: { params: idParams } }, async (req: FastifyRequest<{ Params: { id: string } }>, reply) => {
    const j = await svc.getJob(req.params.id);
    return j ? { job: svc.jobView(j) } : fault(reply, 404, 'job-not-found', 'no such job');
  });

  app.get('/api/jobs/:id/attempts', { schema: { params: idParams } }, async (req: FastifyRequest<{ Params: { id: string } }>, reply) => {
    const j = await svc.getJob(req.params.id);
    return j ? { attempts: await svc.store.jobs.attempts({ jobId: j.id }) } : fault(reply, 404, 'job-not-found', 'no such job');
  });

  app.post('/api/jobs/:id/cancel', { schema: { params: idParams }, preHandler: auth }, async (req: FastifyRequest<{ Params: { id: string } }>, reply) => {
    const r = await svc.cancel(req.params.id);
    return 'refusal' in r ? refuse(reply, r.refusal) : reply.code(202).send({ job: r.job });
  });
}
