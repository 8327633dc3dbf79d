/** JSON schemas of the API's inputs: fastify validates requests with them, and the OpenAPI document shows them. */

export const UUID_PATTERN = '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$';

export const idParams = {
  type: 'object',
  required: ['id'],
  additionalProperties: false,
  properties: { id: { type: 'string', pattern: UUID_PATTERN, description: 'A disk or job id (a UUID; never a path)' } },
} as const;

/** Device names as virt-sparsify takes them: /dev/sda1, /dev/VG/LV, or a bare VG name. */
const deviceName = { type: 'string', minLength: 1, maxLength: 255, pattern: '^[A-Za-z0-9/_.+:-]+$' } as const;

export const sparsifyBody = {
  description: 'Optional. An empty body sparsifies with the configured default mode.',
  type: ['object', 'null'],
  additionalProperties: false,
  properties: {
    mode: { type: 'string', enum: ['in-place', 'copy-and-replace'], description: 'in-place discards free space through the image; copy-and-replace writes a sparse copy beside it and renames it over the original' },
    ignore: { type: 'array', maxItems: 64, items: deviceName, description: 'Filesystems or volume groups left alone (as virt-sparsify --ignore)' },
    zero: { type: 'array', maxItems: 64, items: deviceName, description: 'Partitions or LVs zeroed whole (as virt-sparsify --zero)' },
  },
} as const;

export const allocationBody = {
  type: 'object',
  required: ['allocation'],
  additionalProperties: false,
  properties: { allocation: { type: 'string', enum: ['sparse', 'preallocated', 'auto'], description: 'auto: detected from the host (fallocated space never written)' } },
} as const;

export const domainParams = {
  type: 'object',
  required: ['id'],
  additionalProperties: false,
  properties: { id: { type: 'string', pattern: UUID_PATTERN, description: "A storage domain's UUID (from its .sparsify-domain.json)" } },
} as const;

export const domainBody = {
  type: 'object',
  required: ['compaction'],
  additionalProperties: false,
  properties: {
    compaction: {
      type: 'string',
      enum: ['always', 'where-no-holes', 'never'],
      description:
        'When in-place sparsify compacts (moves the kept data down and shortens the image, which gives space back on any storage): always; where-no-holes (the default): only where the storage cannot punch holes or the device cannot discard; never: then a compactable disk on such storage is refused. vdi compacts whatever is asked.',
    },
  },
} as const;

export const jobsQuery = {
  type: 'object',
  additionalProperties: false,
  properties: {
    status: { type: 'string', pattern: '^(pending|running|finished|failed|cancelled)(,(pending|running|finished|failed|cancelled))*$' },
    diskId: { type: 'string', pattern: UUID_PATTERN },
    limit: { type: 'string', pattern: '^[0-9]{1,4}$' },
  },
} as const;

export const eventsQuery = {
  type: 'object',
  additionalProperties: false,
  properties: {
    after: { type: 'string', pattern: '^[0-9]{1,15}$' },
    limit: { type: 'string', pattern: '^[0-9]{1,4}$' },
  },
} as const;

export const disksQuery = {
  type: 'object',
  additionalProperties: false,
  properties: {
    limit: { type: 'string', pattern: '^[1-9][0-9]{0,3}$', description: 'One page of this many disks (1 to 1000), and the cursor of the next (without it: the whole list, streamed)' },
    after: { type: 'string', maxLength: 2000, description: "The cursor `next` of the previous page (same sort)" },
    sort: { type: 'string', pattern: '^(name|actualSize|virtualSize|reclaimable|status)(:(asc|desc))?$', description: 'Sort key and direction; ties by disk id; unknown sizes sort as smallest. Pages: name:asc by default; the whole list: first seen first' },
    domain: { type: 'string', maxLength: 200, description: 'Only the disks of this storage domain (its id)' },
    vm: { type: 'string', maxLength: 300, description: 'Only the disks of this VM (its UUID or name)' },
    status: { type: 'string', enum: ['ok', 'locked', 'in-use', 'illegal', 'unreachable'] },
    needsSparsify: { type: 'string', enum: ['true', 'false'] },
    q: { type: 'string', maxLength: 200, description: 'Substring of the name (any case)' },
    format: { type: 'string', enum: ['json', 'ndjson'], description: 'The whole list as one JSON object (default) or one disk per line' },
  },
} as const;

export const policyBody = {
  type: 'object',
  additionalProperties: false,
  minProperties: 1,
  properties: {
    thresholdBytes: { type: 'integer', minimum: 0 },
    thresholdPercent: { type: 'integer', minimum: 0, maximum: 100 },
    scheduleEnabled: { type: 'boolean' },
    scheduleIntervalSeconds: { type: 'integer', minimum: 1, maximum: 2592000 },
    trimVms: { type: 'array', maxItems: 10000, items: { type: 'string', pattern: UUID_PATTERN } },
    trimDomains: { type: 'array', maxItems: 10000, items: { type: 'string', minLength: 1, maxLength: 200 } },
    trimOneAtATime: { type: 'boolean' },
  },
} as const;

export const hostParams = {
  type: 'object',
  required: ['name'],
  additionalProperties: false,
  properties: { name: { type: 'string', pattern: '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$', description: 'A host name' } },
} as const;

export const vmsQuery = {
  type: 'object',
  additionalProperties: false,
  properties: {
    host: { type: 'string', pattern: '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$', description: 'Only the VMs of this host' },
    up: { type: 'string', enum: ['true', 'false'], description: 'Only VMs that are up (not shut off), or only those that are down' },
  },
} as const;

export const vmParams = {
  type: 'object',
  required: ['id'],
  additionalProperties: false,
  properties: { id: { type: 'string', pattern: UUID_PATTERN, description: "A VM's libvirt UUID" } },
} as const;

export const historyQuery = {
  type: 'object',
  additionalProperties: false,
  properties: {
    days: { type: 'string', pattern: '^[0-9]{1,3}$', description: 'How far back, in days (1 to 366; default 30)' },
  },
} as const;

export const streamQuery = {
  type: 'object',
  additionalProperties: false,
  properties: { disks: { type: 'string', maxLength: 40_000, description: 'Disk ids, comma-separated: disk events only for these' } },
} as const;
