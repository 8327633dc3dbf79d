/** /api/disks: the disks of every domain, one disk with its map, its allocation, and the sparsify action. */
import type { FastifyInstance, FastifyRequest, preHandlerHookHandler } from 'fastify';
import type { Service } from '../../service.js';
import type { SparsifyMode } from '../../config.js';
import { idParams, sparsifyBody, allocationBody, disksQuery } from '../schemas.js';
import { fault, refuse } from '../faults.js';

export function diskRoutes(app: FastifyInstance, svc: Service, auth: preHandlerHookHandler): void {
  app.get('/api/disks', { schema: { querystring: disksQuery } }, async (req: FastifyRequest<{ Querystring: { status?: string; needsSparsify?: string; q?: string } }>, reply) => {
    const { status, needsSparsify, q } = req.query;
    // The whole list is served as kept, serialized once per change.
    if (!status && !needsSparsify && !q) return reply.type('application/json; charset=utf-8').send(await svc.catalog.listJson());
    let disks = await svc.listDiskViews();
    if (status) disks = disks.filter((d) => d.status === status);
    if (needsSparsify) disks = disks.filter((d) => d.needsSparsify === (needsSparsify === 'true'));
    if (q) disks = disks.filter((d) => d.name.toLowerCase().includes(q.toLowerCase()));
    return { disks };
  });

  app.get('/api/disks/:id', { schema: { params: idParams } }, async (req: FastifyRequest<{ Params: { id: string } }>, reply) => {
    const d = await svc.getDiskView(req.params.id);
    return d ? { disk: d } : fault(reply, 404, 'disk-not-found', 'no such disk');
  });

  app.patch(
    '/api/disks/:id',
    { schema: { params: idParams, body: allocationBody }, preHandler: auth },
    async (req: FastifyRequest<{ Params: { id: string }; Body: { allocation: 'sparse' | 'preallocated' | 'auto' } }>, reply) => {
      const d = await svc.setAllocation(req.params.id, req.body.allocation);
      return d ? { disk: d } : fault(reply, 404, 'disk-not-found', 'no such disk');
    },
  );

  app.post(
    '/api/disks/:id/sparsify',
    { schema: { params: idParams, body: sparsifyBody }, preHandler: auth },
    async (req: FastifyRequest<{ Params: { id: string }; Body: { mode?: SparsifyMode; ignore?: string[]; zero?: string[] } | null }>, reply) => {
      const r = await svc.submit(req.params.id, req.body ?? {});
      if ('refusal' in r) return refuse(reply, r.refusal);
      return reply.code(202).header('location', r.job.href).send({ job: r.job });
    },
  );
}
