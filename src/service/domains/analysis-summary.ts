/** The analysis in brief, as the store keeps it and the disk list shows it. */
import type { DiskMapJson, NodeJson } from '../../index.js';
import type { AnalysisSummary } from '../store/records.js';

/** The analysis in brief: what the disk list shows. */
export function summarize(map: DiskMapJson): AnalysisSummary {
  const encrypted = { opened: 0, keptWhole: 0 };
  const walk = (n: NodeJson) => {
    if (n.contentKind === 'encrypted') {
      if (n.children.length) encrypted.opened++;
      else encrypted.keptWhole++;
    }
    n.children.forEach(walk);
  };
  walk(map.root);
  return {
    dataBytes: map.dataBytes,
    reclaimableBytes: map.reclaimableBytes,
    ownDataBytes: map.ownDataBytes,
    snapshotOnlyBytes: map.snapshotOnlyBytes,
    ...(map.snapshotAdvice ? { snapshotAdvice: map.snapshotAdvice } : {}),
    warnings: map.warnings,
    ...(encrypted.opened || encrypted.keptWhole ? { encrypted } : {}),
  };
}

