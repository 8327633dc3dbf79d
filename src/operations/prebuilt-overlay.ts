/**
 * --tmp prebuilt:FILE, as oVirt uses it: virt-sparsify takes FILE, a qcow2 overlay freshly made on
 * the input disk, as its temporary space. sparsify reads the input directly and needs none, so FILE
 * is only checked, never written and never deleted.
 *
 * virt-sparsify checks that FILE exists, is qcow2 and has a backing file (same messages here). Its
 * manual also requires it to be freshly made with the input disk as its backing file: virt-sparsify
 * would read the guest through FILE, so data already in it, or another backing file, would change
 * the result. Since sparsify reads the input itself, those are checked too rather than ignored.
 */
import { stat } from 'node:fs/promises';
import { SparsifyError } from '../io/errors.js';
import { BlockFile } from '../io/file.js';
import { openImage, probeFormat } from '../formats/open.js';

function bad(file: string, why: string): SparsifyError {
  return new SparsifyError(`--tmp prebuilt:file: ${file}: ${why}`);
}

async function formatOf(path: string): Promise<string> {
  const f = await BlockFile.open(path, 'r');
  try {
    return await probeFormat(f);
  } finally {
    await f.close();
  }
}

/**
 * Check FILE against the input disk (and its format, when given). Returns a line for -v saying
 * what was found and that nothing is written to it.
 */
export async function checkPrebuiltOverlay(file: string, input: string, inputFormat?: string): Promise<string> {
  const st = await stat(file).catch(() => undefined);
  if (!st) throw bad(file, 'file does not exist');
  if (!st.isFile()) throw bad(file, 'not a regular file');
  if ((await formatOf(file)) !== 'qcow2') throw bad(file, 'file format is not qcow2');
  const inStat = await stat(input).catch(() => undefined);
  if (!inStat) throw new SparsifyError(`cannot open ${input}: ENOENT`);

  // Open it as qcow2 (its backing file too, read-only), but take no lock on the file itself.
  let image;
  try {
    image = await openImage(file, { format: 'qcow2', lock: 'none' });
  } catch (e) {
    if (e instanceof SparsifyError) throw bad(file, e.message);
    throw e;
  }
  try {
    const [top, backing] = image.layers();
    if (!backing) throw bad(file, 'file does not have backing file');
    const bStat = await stat(backing.path);
    if (bStat.dev !== inStat.dev || bStat.ino !== inStat.ino) {
      throw bad(file, `its backing file ${String(top?.details?.backing_file ?? backing.path)} is not the input disk ${input}`);
    }
    const expected = inputFormat ?? (await formatOf(input));
    if (backing.format !== expected) throw bad(file, `it reads its backing file as ${backing.format}, but the input disk is ${expected}`);
    if (image.virtualSize !== backing.virtualSize) {
      throw bad(file, `its virtual size (${image.virtualSize}) is not the input disk's (${backing.virtualSize}): it was not freshly made on it`);
    }
    if (top?.details?.snapshots) throw bad(file, 'it has internal snapshots: it was not freshly made; recreate it before each run');
    let held = 0;
    for await (const e of image.ownExtents?.(0, image.virtualSize) ?? []) if (e.kind !== 'unallocated') held += e.end - e.start;
    if (held > 0) throw bad(file, `it already holds ${held} bytes of the guest's disk: it was not freshly made; recreate it before each run`);
  } finally {
    await image.close();
  }
  return `--tmp prebuilt:${file}: a fresh qcow2 overlay of ${input}; sparsify reads the input directly and needs no temporary space, so nothing is written to it (and it is not deleted)`;
}
