/** /api/disks: the disks of every domain, one disk with its map, its allocation, and the sparsify action. */
import { Readable } from 'node:stream';
import type { FastifyInstance, FastifyRequest, preHandlerHookHandler } from 'fastify';
import type { Service } from '../../service.js';
import type { SparsifyMode } from '../../config.js';
import { idParams, sparsifyBody, allocationBody, disksQuery } from '../schemas.js';
import { fault as faultBody, one, pageOf, secured, summaryOf } from '../docs.js';
import { fault, refuse } from '../faults.js';
import { fresh, sendTagged } from '../etag.js';
import { ListRequestError, type ListParams } from '../../disk-list.js';
import type { DiskView } from '../../views.js';

const tags = ['disks'];

export function diskRoutes(app: FastifyInstance, svc: Service, auth: preHandlerHookHandler): void {
  app.get(
    '/api/disks',
    {
      schema: {
        tags,
        summary: 'List the disks of every storage domain: one page (limit, after, sort, filters) or the whole list, streamed',
        description:
          'With `limit`: `{"disks": [Disk], "next": cursor|null}`, sorted and filtered by the database; pass `next` as `after` for the next page. ' +
          'Without: every disk that matches, as `{"disks": [...]}` or NDJSON (`format=ndjson`), written as it is read. Answers carry an ETag (If-None-Match: 304).',
        querystring: disksQuery,
        response: { 200: pageOf, 400: faultBody },
      },
    },
    async (req: FastifyRequest<{ Querystring: ListParams & { format?: 'json' | 'ndjson' } }>, reply) => {
      const { format, ...p } = req.query;
      try {
        if (p.limit !== undefined || p.after !== undefined) return sendTagged(req, reply, JSON.stringify(await svc.diskList.page(p)));
        const plain = !p.sort && !p.domain && !p.status && !p.vm && !p.needsSparsify && !p.q && format !== 'ndjson';
        // A site within the catalog's budget: the whole list as kept, encoded once per change.
        const kept = plain ? await svc.catalog.listJson() : undefined;
        if (kept) {
          const tag = svc.catalog.tagOf(kept);
          reply.header('etag', tag).header('cache-control', 'no-cache');
          if (fresh(req, tag)) return reply.code(304).send();
          return reply.type('application/json; charset=utf-8').header('content-length', kept.length).send(Readable.from(kept.chunks, { objectMode: false }));
        }
        const tag = svc.diskList.streamTag(req.url);
        reply.header('etag', tag).header('cache-control', 'no-cache');
        if (fresh(req, tag)) return reply.code(304).send();
        const chunks = svc.diskList.stream(p);
        // The first chunk is read before answering: a refused request still gets its 400.
        const first = await chunks.next();
        return reply.type(format === 'ndjson' ? 'application/x-ndjson; charset=utf-8' : 'application/json; charset=utf-8').send(Readable.from(encodeList(first, chunks, format === 'ndjson')));
      } catch (e) {
        if (e instanceof ListRequestError) return fault(reply, 400, e.code, e.message);
        throw e;
      }
    },
  );

  app.get(
    '/api/summary',
    { schema: { tags, summary: 'Counts and byte totals of the disks: in all, per status, per domain, and how many need sparsify (the UI header and charts)', response: { 200: summaryOf, 400: faultBody } } },
    async (req, reply) => sendTagged(req, reply, JSON.stringify({ summary: await svc.diskList.summary() })),
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

/** The whole list's body, chunk by chunk as the database gives them: `{"disks":[...]}` or one view per line. */
async function* encodeList(first: IteratorResult<DiskView[]>, rest: AsyncGenerator<DiskView[]>, ndjson: boolean): AsyncGenerator<string> {
  let n = 0;
  if (!ndjson) yield '{"disks":[';
  for (let r = first; !r.done; r = await rest.next()) {
    let text = '';
    for (const d of r.value) text += ndjson ? `${JSON.stringify(d)}\n` : `${n++ ? ',' : ''}${JSON.stringify(d)}`;
    yield text;
  }
  if (!ndjson) yield ']}';
}
