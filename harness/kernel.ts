/**
 * The kernel side of a harness run: whether one can run here
 * (kernelUnavailable: root, a bpffs, the BPF object built) and pin roots
 * removed with everything neuv-bpf keeps for them (makePinRoot).
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import { journalDir } from '../src/intercept/journal';
import { removeLockFiles } from '../src/lock';
import { BPF_FS_MAGIC } from '../src/pins';
import { OBJ, onCleanup, uniqueName } from './proc';

/** Why programs cannot be loaded and namespaces made here, or undefined if they can (mounts the bpffs if it is missing). */
export function kernelUnavailable(): string | undefined {
  if (process.env.NEUV_BPF_UNIT_ONLY === '1') return 'NEUV_BPF_UNIT_ONLY=1';
  if (process.getuid?.() !== 0) return 'needs root (CAP_BPF, CAP_NET_ADMIN, netns)';
  try {
    if (fs.statfsSync('/sys/fs/bpf').type !== BPF_FS_MAGIC) {
      execFileSync('mount', ['-t', 'bpf', 'bpf', '/sys/fs/bpf']);
    }
  } catch {
    return 'no bpffs at /sys/fs/bpf and it cannot be mounted';
  }
  if (!fs.existsSync(OBJ)) return `BPF object ${OBJ} missing (make build)`;
  return undefined;
}

/** A fresh pin root under /sys/fs/bpf (uniqueName()), removed at cleanup with its journal and lock files. */
export function makePinRoot(): string {
  const p = `/sys/fs/bpf/${uniqueName('nbt')}`;
  onCleanup(() => {
    fs.rmSync(p, { recursive: true, force: true });
    fs.rmSync(journalDir(p), { recursive: true, force: true });
    removeLockFiles(p);
  }, `pin root ${p}`);
  return p;
}
