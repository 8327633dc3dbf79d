/** The API described as OpenAPI 3.0, served at /api/docs (JSON, or a readable page for browsers). */
import { idParams, sparsifyBody, allocationBody, jobsQuery, eventsQuery, disksQuery, policyBody, vmsQuery, vmParams, historyQuery } from './schemas.js';

const fault = {
  description: 'The request was refused',
  content: { 'application/json': { schema: { $ref: '#/components/schemas/Fault' } } },
};
const json = (ref: string, description: string) => ({ description, content: { 'application/json': { schema: { $ref: `#/components/schemas/${ref}` } } } });
const secured = [{ token: [] }];
const idParam = [{ name: 'id', in: 'path', required: true, schema: idParams.properties.id }];
const queryParams = (q: { properties: Record<string, object> }) => Object.entries(q.properties).map(([name, schema]) => ({ name, in: 'query', required: false, schema }));

export function openApiDocument(version: string): object {
  return {
    openapi: '3.0.3',
    info: {
      title: 'sparsify service',
      version,
      description:
        'Sparsify a pool of VM disk images: the disks of the storage domains with what each would give back, storage jobs that survive restarts, events and policies. ' +
        'Calls that change anything need the token (Authorization: Bearer TOKEN), printed at first start and kept in the data folder. ' +
        'Refusals are `{"fault": {"reason", "detail", "code"}}` with 400 (bad input or unsupported disk), 401, 404 (unknown disk or job) or 409 (in use, locked, derived disks).',
    },
    components: {
      securitySchemes: { token: { type: 'http', scheme: 'bearer' } },
      schemas: {
        Fault: {
          type: 'object',
          properties: { fault: { type: 'object', properties: { reason: { type: 'string' }, detail: { type: 'string' }, code: { type: 'string' } } } },
        },
        Disk: {
          type: 'object',
          description: 'A disk image in a storage domain',
          properties: {
            id: { type: 'string', format: 'uuid' },
            name: { type: 'string' },
            path: { type: 'string', description: 'Relative to its domain' },
            format: { type: 'string', nullable: true },
            virtualSize: { type: 'integer', nullable: true },
            actualSize: { type: 'integer', description: 'Bytes allocated on the host' },
            allocation: { type: 'string', enum: ['sparse', 'preallocated'] },
            chain: { type: 'object', description: 'depth, leaf, backingId, derivedIds, snapshots' },
            status: { type: 'string', enum: ['ok', 'locked', 'in-use', 'illegal'] },
            reclaimableBytes: { type: 'integer', nullable: true },
            needsSparsify: { type: 'boolean' },
            sparsify: { type: 'object', description: 'Would a sparsify request be accepted now, and if not, why (status, code, reason)' },
            analysis: { type: 'object' },
          },
        },
        Job: {
          type: 'object',
          properties: {
            id: { type: 'string', format: 'uuid' },
            href: { type: 'string' },
            diskId: { type: 'string' },
            status: { type: 'string', enum: ['pending', 'running', 'finished', 'failed', 'cancelled'] },
            steps: { type: 'array', items: { type: 'object', description: 'name (validating, executing, finalizing), status, startedAt, endedAt, done, total' } },
            progress: { type: 'object', properties: { done: { type: 'integer' }, total: { type: 'integer' }, percent: { type: 'integer' } } },
            startedAt: { type: 'integer', nullable: true },
            endedAt: { type: 'integer', nullable: true },
            actualBefore: { type: 'integer', nullable: true },
            actualAfter: { type: 'integer', nullable: true },
            bytesReclaimed: { type: 'integer', nullable: true },
            error: { type: 'string', nullable: true },
          },
        },
        Event: {
          type: 'object',
          properties: { id: { type: 'integer' }, time: { type: 'integer' }, severity: { type: 'string' }, type: { type: 'string' }, diskId: { type: 'string', nullable: true }, jobId: { type: 'string', nullable: true }, message: { type: 'string' } },
        },
        Policy: policyBody,
      },
    },
    paths: {
      '/api/disks': {
        get: { summary: 'List the disks of all domains', parameters: queryParams(disksQuery), responses: { 200: json('Disk', '{"disks": [Disk]}'), 400: fault } },
      },
      '/api/disks/{id}': {
        get: { summary: 'One disk, with its disk map (the analysis tree)', parameters: idParam, responses: { 200: json('Disk', 'The disk'), 400: fault, 404: fault } },
        patch: {
          summary: 'Declare the disk thin or preallocated (preallocated disks are not sparsified)',
          security: secured,
          parameters: idParam,
          requestBody: { content: { 'application/json': { schema: allocationBody } } },
          responses: { 200: json('Disk', 'The disk'), 400: fault, 401: fault, 404: fault },
        },
      },
      '/api/disks/{id}/sparsify': {
        post: {
          summary: 'Sparsify the disk in a job',
          description:
            'Checked in order, first failure wins: 404 unknown disk; 409 attached to a VM that is not down (vm-not-down, naming it); 409 in use (QEMU write lock); 409 illegal (unreadable); ' +
            '400 format or storage cannot discard; 400 preallocated; 400 a backing chain that is not qcow2, or internal snapshots; 409 locked by another job; 409 has derived disks. ' +
            'The leaf of a qcow2 chain is sparsified keeping its backing file (only its own clusters are given back). ' +
            'Then 202 with the job; the disk stays locked until the job ends.',
          security: secured,
          parameters: idParam,
          requestBody: { required: false, content: { 'application/json': { schema: sparsifyBody } } },
          responses: { 202: json('Job', 'Accepted: {"job": Job}, Location: the job URL'), 400: fault, 401: fault, 404: fault, 409: fault },
        },
      },
      '/api/rescan': { post: { summary: 'Rescan the storage domains now', security: secured, responses: { 202: { description: 'Rescan started' }, 401: fault } } },
      '/api/jobs': { get: { summary: 'List jobs, newest first', parameters: queryParams(jobsQuery), responses: { 200: json('Job', '{"jobs": [Job]}'), 400: fault } } },
      '/api/jobs/{id}': { get: { summary: 'One job with its steps and progress', parameters: idParam, responses: { 200: json('Job', '{"job": Job}'), 400: fault, 404: fault } } },
      '/api/jobs/{id}/cancel': {
        post: {
          summary: 'Cancel a pending or running job (it stops between ranges; the disk stays consistent and is unlocked)',
          security: secured,
          parameters: idParam,
          responses: { 202: json('Job', '{"job": Job}'), 401: fault, 404: fault, 409: fault },
        },
      },
      '/api/events': { get: { summary: 'Events, newest first', parameters: queryParams(eventsQuery), responses: { 200: json('Event', '{"events": [Event]}'), 400: fault } } },
      '/api/stream': { get: { summary: 'Server-sent events: disk, job, progress and event messages', responses: { 200: { description: 'text/event-stream' } } } },
      '/api/policy': {
        get: { summary: 'The "needs sparsify" threshold and the schedule', responses: { 200: json('Policy', 'The policy') } },
        put: { summary: 'Change the policy', security: secured, requestBody: { content: { 'application/json': { schema: policyBody } } }, responses: { 200: json('Policy', 'The policy'), 400: fault, 401: fault } },
      },
      '/api/vms': {
        get: {
          summary: "Every host's VMs (read from its libvirt) with their state and disks; each disk of a storage domain carries its diskId",
          parameters: queryParams(vmsQuery),
          responses: { 200: { description: '{"vms": [{id, name, host, state, reason, up, disks: [{target, device, type, source, diskId, domainId, path}]}], "sources": [{host, uri, error, refreshedAt, changedAt}]}' }, 400: fault },
        },
      },
      '/api/vms/{id}': { get: { summary: 'One VM by its libvirt UUID (as each host that knows it reports it)', parameters: [{ name: 'id', in: 'path', required: true, schema: vmParams.properties.id }], responses: { 200: { description: '{"vms": [...]}' }, 400: fault, 404: fault } } },
      '/api/vms/refresh': { post: { summary: 'Read the VMs from libvirt now, on every host', security: secured, responses: { 200: { description: 'The VMs, as GET /api/vms' }, 401: fault } } },
      '/api/history': {
        get: {
          summary: 'The job history as chart series: space given back (summed) and each domain’s actual size as the jobs changed it',
          parameters: queryParams(historyQuery),
          responses: { 200: { description: '{"since", "now", "jobs", "reclaimed": [[ms, bytes]], "domains": [{id, name, actualBytes, points: [[ms, bytes]]}]}' }, 400: fault },
        },
      },
      '/api/info': { get: { summary: 'Version, domains, default mode', responses: { 200: { description: 'Service facts' } } } },
      '/api/docs': { get: { summary: 'This document', responses: { 200: { description: 'OpenAPI 3 (JSON), or a page when a browser asks' } } } },
    },
  };
}

const esc = (s: string) => s.replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]!);

/** A plain page listing the operations, for people who open /api/docs in a browser. */
export function openApiHtml(doc: ReturnType<typeof openApiDocument>): string {
  const d = doc as { info: { title: string; version: string; description: string }; paths: Record<string, Record<string, { summary: string; description?: string; security?: unknown }>> };
  const rows = Object.entries(d.paths)
    .flatMap(([path, ops]) =>
      Object.entries(ops).map(
        ([method, op]) =>
          `<section><h3><code>${method.toUpperCase()} ${esc(path)}</code>${op.security ? ' <small>(token)</small>' : ''}</h3><p>${esc(op.summary)}</p>${op.description ? `<p>${esc(op.description)}</p>` : ''}</section>`,
      ),
    )
    .join('\n');
  return `<!doctype html><html><head><meta charset="utf-8"><title>${esc(d.info.title)} API</title>
<style>body{font:15px system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}code{background:#f2f2f2;padding:0 .3em}section{border-top:1px solid #ddd}</style></head>
<body><h1>${esc(d.info.title)} API ${esc(d.info.version)}</h1><p>${esc(d.info.description)}</p><p>Machine-readable: <a href="/api/docs?format=json">/api/docs?format=json</a> (OpenAPI 3)</p>${rows}</body></html>`;
}
