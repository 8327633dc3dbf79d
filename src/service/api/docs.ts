/**
 * The OpenAPI document, generated from the routes' own schemas by @fastify/swagger, so it cannot
 * drift from what the routes accept; served as JSON at /api/docs/json and as Swagger UI at
 * /api/docs. The shapes of responses are named here once, for the document.
 */
import type { FastifyInstance } from 'fastify';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';

const obj = (description: string, properties: Record<string, object>) => ({ type: 'object', description, additionalProperties: true, properties });
const int = (description: string, nullable = false) => ({ type: 'integer', description, ...(nullable ? { nullable: true } : {}) });
const str = (description: string, nullable = false) => ({ type: 'string', description, ...(nullable ? { nullable: true } : {}) });

/** Response shapes, registered with addSchema and referenced as { $ref: 'Name#' }. */
const SHAPES = {
  Fault: obj('A refusal: a stable code a client can switch on, and the reason in words', {
    fault: obj('', { reason: str('HTTP reason phrase'), detail: str('What is wrong, and what to do'), code: str('disk-not-found, disk-in-use, disk-locked, token-required, database-unavailable, ...') }),
  }),
  Disk: obj('A disk image of a storage domain, with what it would give back', {
    id: str('A UUID; never a path'),
    name: str('File name'),
    domain: str("The storage domain's name"),
    domainId: str("The storage domain's UUID"),
    path: str('Path inside the domain'),
    format: str('raw, qcow2, vdi, vmdk, vpc, vhdx', true),
    virtualSize: int('Bytes the guest sees', true),
    actualSize: int('Bytes allocated on the host'),
    allocation: str('sparse or preallocated'),
    chain: obj('Backing chain: depth, leaf, backingId, derivedIds, snapshots', {}),
    storage: obj('How space goes back: canRelease (holes or BLKDISCARD), compaction (the domain setting), compacts (an in-place job compacts it)', {}),
    device: obj('A block device (symlinked into the domain): target, size, discardMaxBytes (0: cannot discard), discardGranularity, provisioningMode (SCSI); null for a file', {}),
    status: str('ok, locked, in-use, illegal, unreachable'),
    analysis: obj('The analysis: state (pending until the file as it is now is analyzed), data, reclaimable, snapshotOnlyBytes (free space held only by earlier snapshots) and snapshotAdvice, warnings', {}),
    reclaimableBytes: int('Free in the guest and allocated in the disk’s own file (the top of its chain): what sparsify would give back', true),
    vms: { type: 'array', description: 'The VMs that use it (every host’s libvirt): id, name, host, state, target', items: obj('', {}) },
    needsSparsify: { type: 'boolean', description: 'Over the policy threshold' },
    sparsify: obj('Would a sparsify request be accepted now, and if not, why (status, code, reason)', {}),
  }),
  Job: obj('A storage job', {
    id: str('UUID'),
    diskId: str('UUID'),
    status: str('pending, running, finished, failed, cancelled'),
    host: str('The host running it, or the last that did', true),
    attempts: int('Claims so far (the fencing token)'),
    steps: { type: 'array', items: obj('validating, executing, finalizing', {}) },
    progress: obj('', { done: int('bytes done'), total: int('bytes planned'), percent: int('0-100') }),
    bytesReclaimed: int('Actual size before minus after (null on a block device, whose allocation only the device knows)', true),
    result: obj(
      'In place: what the engine measured (never estimated). givenBack (allocatedBefore - allocatedAfter, du) of which byTruncation and byHoles; discarded (virtual bytes); released, compacted; endBefore/endAfter (file length; on a block device the image end, to which the volume can be reduced); bytesMoved; compactableEnd; isBlockDevice; compaction (the domain setting used)',
      {},
    ),
    error: str('Why it failed', true),
  }),
  Domain: obj('A storage domain: a folder of images (and symlinks to block devices) that hosts mount', {
    id: str("UUID, from .sparsify-domain.json at the domain's root"),
    name: str(''),
    compaction: str('When in-place sparsify compacts its images: always, where-no-holes (the default), never'),
    reachable: { type: 'boolean', description: 'Some up host reaches it' },
    canDiscard: { type: 'boolean', description: 'Some up host that reaches it can punch holes in its files' },
    hosts: { type: 'array', description: 'How each host mounts it: host, up, path, reachable, canDiscard, error', items: obj('', {}) },
  }),
  Attempt: obj("One host's run of a job, from claim to end", { attempt: int(''), host: str(''), startedAt: int(''), endedAt: int('', true), outcome: str('running, finished, failed, cancelled, taken-over, handed-back, interrupted') }),
  Host: obj('A host of the service', {
    name: str(''),
    status: str('up, non-responsive, stopped'),
    lastHeartbeat: int('ms since the epoch, database clock'),
    heartbeatAgeMs: int(''),
    version: str(''),
    domains: { type: 'array', items: obj('A domain as this host mounts it', {}) },
    jobs: { type: 'array', items: obj('A job it runs', {}) },
  }),
  Event: obj('Something that happened', { id: int(''), time: int(''), severity: str('info, warning, error'), type: str(''), diskId: str('', true), jobId: str('', true), host: str('', true), message: str('') }),
  Policy: obj('"Needs sparsify" threshold and schedule', { thresholdBytes: int(''), thresholdPercent: int(''), scheduleEnabled: { type: 'boolean' }, scheduleIntervalSeconds: int(''), trimVms: { type: 'array', items: { type: 'string' }, description: 'Running VMs (UUIDs) the schedule trims through their guest agents (opt-in)' }, trimDomains: { type: 'array', items: { type: 'string' }, description: 'Storage domains whose running VMs the schedule trims (opt-in)' }, trimOneAtATime: { type: 'boolean', description: 'One trim at a time on each host (default true)' } }),
};

export const ref = (name: keyof typeof SHAPES) => ({ $ref: `${name}#` });
export const listOf = (key: string, name: keyof typeof SHAPES, description: string) => ({ type: 'object', description, properties: { [key]: { type: 'array', items: ref(name) } } });
export const one = (key: string, name: keyof typeof SHAPES, description: string) => ({ type: 'object', description, properties: { [key]: ref(name) } });
export const fault = ref('Fault');
/** A page of the disk list (or the whole list, without `next`). */
export const pageOf = {
  type: 'object',
  description: '{"disks": [Disk], "next": cursor|null}; the whole list has no next',
  properties: { disks: { type: 'array', items: ref('Disk') }, next: { type: 'string', nullable: true, description: 'The cursor of the next page (pass it as after), null on the last' } },
};
const totals = { disks: int('Disks'), virtualBytes: int('Sum of virtual sizes'), actualBytes: int('Sum of actual sizes'), reclaimableBytes: int('Sum of what the disks would give back'), needsSparsify: int('Disks over the policy threshold') };
export const summaryOf = {
  type: 'object',
  description: '{"summary": Summary}',
  properties: {
    summary: {
      type: 'object',
      additionalProperties: true,
      properties: {
        ...totals,
        analysis: obj('Disks by analysis state', { done: int(''), pending: int(''), failed: int('') }),
        byStatus: { type: 'object', description: 'Totals per status: ok, locked, in-use, illegal, unreachable', additionalProperties: obj('Totals', totals) },
        byDomain: { type: 'array', items: obj('Totals of one domain, with its domainId and name', { domainId: str(''), name: str(''), ...totals }) },
      },
    },
  },
};
/** The token, for routes that need it (every route, when the service listens beyond localhost). */
export const secured = [{ token: [] as string[] }];

export async function registerDocs(app: FastifyInstance, version: string): Promise<void> {
  for (const [name, schema] of Object.entries(SHAPES)) app.addSchema({ $id: name, ...schema });
  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: {
        title: 'sparsify service',
        version,
        description:
          'Sparsify a pool of VM disk images on one or several hosts: the disks of the storage domains with what each would give back, storage jobs that survive the death of their host, events, hosts and policies. ' +
          'Calls that change anything need the token (Authorization: Bearer TOKEN); when the service listens beyond localhost, every call does, reads included, except GET /api/health. ' +
          'Refusals are {"fault": {"reason", "detail", "code"}}; while the database is away, 503 database-unavailable.',
      },
      components: { securitySchemes: { token: { type: 'http', scheme: 'bearer', description: 'The service token' }, metricsToken: { type: 'http', scheme: 'bearer', description: 'The read-only metrics token (/metrics only)' } } },
      tags: [
        { name: 'disks', description: 'Disks and the sparsify action' },
        { name: 'jobs', description: 'Storage jobs' },
        { name: 'domains', description: 'Storage domains and their settings' },
        { name: 'cluster', description: 'Hosts, events, policy, service facts' },
      ],
    },
  });
  await app.register(swaggerUi, { routePrefix: '/api/docs', staticCSP: true });
}
