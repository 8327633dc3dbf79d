/** sparsify as a library: the same pipeline the CLI and the service use. */
export { Extents, ExtentsBuilder, type Range } from './io/extents.js';
export { SparsifyError, CorruptError, FatalError } from './io/errors.js';
export type { DiskImage, ImageExtent, ExtentKind, LayerInfo, ImageWriter, FormatDriver } from './formats/types.js';
export { openImage, probeFormat, type OpenOptions } from './formats/open.js';
export { formatDrivers, findDriver } from './formats/registry.js';
export { Volume, type Segment, type VolumeSource } from './layout/volume.js';
export { KeyStore, loadKeysFile, parseKeySelector, type KeyProvider, type KeyRequest, type KeySelector, type KeyPrompt } from './layout/luks/keys.js';
export { analyzeDisk, type AnalyzeOptions } from './analyze/analyze.js';
export { reclaimableBytes, freeInGuestBytes, snapshotOnlyBytes, allocationUnit } from './analyze/reclaim.js';
export type { DiskMap, MapNode, ContentKind, VolumeRole } from './analyze/diskmap.js';
export { toJson, toText, humanBytes, snapshotAdvice, type DiskMapJson, type NodeJson } from './analyze/report.js';
export { makePlan, type Plan, type PlanOptions, type PlanStep } from './plan/plan.js';
export { copyImage, type CopyOptions, type CopyResult } from './execute/copy.js';
export type { Progress, ProgressListener } from './execute/progress.js';
export type { OperationEvents } from './operations/events.js';
export { sparsifyCopy, type CopyRequest, type CopyReport } from './operations/copy.js';
export { sparsifyInPlace, type InPlaceRequest, type InPlaceReport } from './operations/in-place.js';
export { acquireImageLock, READ_LOCK, WRITE_LOCK, type LockRequest } from './io/image-lock.js';
