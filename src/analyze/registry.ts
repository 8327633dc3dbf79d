/** The readers the analyzer tries, in order. Containers with strong magic come before filesystems. */
import type { ContainerReader } from '../layout/types.js';
import type { FsReader } from '../fs/types.js';
import { gptReader } from '../layout/gpt.js';
import { mbrReader } from '../layout/mbr.js';
import { luksReader } from '../layout/luks.js';
import { lvmReader } from '../layout/lvm.js';
import { extReader } from '../fs/ext/index.js';
import { xfsReader } from '../fs/xfs.js';
import { btrfsReader } from '../fs/btrfs.js';
import { ntfsReader } from '../fs/ntfs.js';
import { exfatReader } from '../fs/exfat.js';
import { fatReader } from '../fs/fat.js';
import { swapReader } from '../fs/swap.js';

/** Partition tables, tried on whole disks only. GPT first: its protective MBR would match too. */
export const PARTITION_TABLES: readonly ContainerReader[] = [gptReader, mbrReader];

/** Containers tried on any volume: their magic is at fixed places filesystems do not use. */
export const VOLUME_CONTAINERS: readonly ContainerReader[] = [luksReader, lvmReader];

export const FILESYSTEMS: readonly FsReader[] = [extReader, xfsReader, btrfsReader, ntfsReader, exfatReader, fatReader, swapReader];
