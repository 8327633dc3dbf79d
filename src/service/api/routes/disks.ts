/** /api/disks: the disks of every domain, one disk with its map, its allocation, and the sparsify action. */
import { Readable } from 'node:stream';
import type { FastifyInstance, FastifyRequest, preHandlerHookHandler } from 'fastify';
import type { Service } from '../../service.js';
import type { SparsifyMode } from '../../config.js';
import { idParams, sparsifyBody, allocationBody, disksQuery } from '../schemas.js';
import { fault as faultBody, listOf, one, secured } from '../docs.js';
import { fault, refuse } from '../faults.js';

const tags = ['disks'];

export function diskRoutes(app: FastifyInstance, svc: Service, auth: preHandlerHookHandler): void {
  app.get(
    '/api/disks',
    { schema: { tags, summary: 'List the disks of every storage domain', querystring: disksQuery, response: { 200: listOf('disks', 'Disk', '{"disks": [Disk]}'), 400: faultBody } } },
    async (req: FastifyRequest<{ Querystring: { status?: string; needsSparsify?: string; q?: string } }>, reply) => {
      const { status, needsSparsify, q } = req.query;
      // The whole list is served as kept, encoded once per change.
      if (!status && !needsSparsify && !q) {
        const body = await svc.catalog.listJson();
        return reply.type('application/json; charset=utf-8').header('content-length', body.length).send(Readable.from(body.chunks, { objectMode: false }));
      }
      let disks = await svc.listDiskViews();
      if (status) disks = disks.filter((d) => d.status === status);
      if (needsSparsify) disks = disks.filter((d) => d.needsSparsify === (needsSparsify === 'true'));
      if (q) disks = disks.filter((d) => d.name.toLowerCase().includes(q.toLowerCase()));
      return { disks };
    },
  );

  app.get(
    '/api/disks/:id',
    { schema: { tags, summary: 'One disk, with its disk map (the analysis tree)', params: idParams, response: { 200: one('disk', 'Disk', '{"disk": Disk}, with map and layers'), 400: faultBody, 404: faultBody } } },
    async (req: FastifyRequest<{ Params: { id: string } }>, reply) => {
      const d = await svc.getDiskView(req.params.id);
      return d ? { disk: d } : fault(reply, 404, 'disk-not-found', 'no such disk');
    },
  );

  app.patch(
    '/api/disks/:id',
    {
      schema: { tags, summary: 'Declare the disk thin or preallocated (preallocated disks are not sparsified)', security: secured, params: idParams, body: allocationBody, response: { 200: one('disk', 'Disk', '{"disk": Disk}'), 400: faultBody, 401: faultBody, 404: faultBody } },
      preHandler: auth,
    },
    async (req: FastifyRequest<{ Params: { id: string }; Body: { allocation: 'sparse' | 'preallocated' | 'auto' } }>, reply) => {
      const d = await svc.setAllocation(req.params.id, req.body.allocation);
      return d ? { disk: d } : fault(reply, 404, 'disk-not-found', 'no such disk');
    },
  );

  app.post(
    '/api/disks/:id/sparsify',
    {
      schema: {
        tags,
        summary: 'Sparsify the disk in a job',
        description:
          'Checked in order, first failure wins: 404 unknown disk; 409 no up host reaches its domain; 409 attached to a VM that is not down (vm-not-down, naming it; every host\'s libvirt); ' +
          '409 in use (QEMU write lock); 409 illegal (unreadable); 400 format or storage cannot discard; 400 preallocated; 400 a backing chain that is not qcow2, or internal snapshots; ' +
          '409 locked by another job; 409 has derived disks. The leaf of a qcow2 chain is sparsified keeping its backing file (only its own clusters are given back). ' +
          'Then 202 with the job; the disk stays locked until the job ends.',
        security: secured,
        params: idParams,
        body: sparsifyBody,
        response: { 202: one('job', 'Job', 'Accepted: {"job": Job}, Location: the job URL'), 400: faultBody, 401: faultBody, 404: faultBody, 409: faultBody },
      },
      preHandler: auth,
    },
    async (req: FastifyRequest<{ Params: { id: string }; Body: { mode?: SparsifyMode; ignore?: string[]; zero?: string[] } | null }>, reply) => {
      const r = await svc.submit(req.params.id, req.body ?? {});
      if ('refusal' in r) return refuse(reply, r.refusal);
      return reply.code(202).header('location', r.job.href).send({ job: r.job });
    },
  );
}
