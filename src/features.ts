/**
 * Kernel feature probes, cached per process and shown by `neuv-bpf version`.
 * Each can be forced for tests with NEUV_BPF_FEATURES="tcx=0,redirect_peer=1".
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import { BPF_TCX_INGRESS, closeFd, libbpfVersion, linkCreateRaw, loadTrivialTcProg, probeTcHelper } from './bpf';
import { ExitCode, NeuvError } from './errors';
import { log } from './log';

export interface Features {
  kernel: string;
  btf: boolean;
  /** tcx links (bpf_link_create with BPF_TCX_INGRESS): kernel >= 6.6. */
  tcx: boolean;
  /** bpf_redirect_peer helper: kernel >= 5.10. */
  redirectPeer: boolean;
  /** The program must set pkt_type before redirect_peer: kernels < 6.15. */
  pktTypeFix: boolean;
  /** tc's pedit action (NeuVector's FWD rules need it; our datapath does not). */
  actPedit: boolean;
  libbpf: string;
}

export type FeatureName = 'tcx' | 'redirectPeer' | 'pktTypeFix' | 'actPedit' | 'btf';

/** What each feature needs, for "not supported by this kernel (needs >= X)" errors. */
export const FEATURE_NEEDS: Record<FeatureName, string> = {
  tcx: 'Linux >= 6.6 (tcx)',
  redirectPeer: 'Linux >= 5.10 (bpf_redirect_peer)',
  pktTypeFix: 'Linux < 6.15',
  actPedit: 'the act_pedit module',
  btf: 'a kernel built with CONFIG_DEBUG_INFO_BTF',
};

const BPF_FUNC_redirect_peer = 155;

/** "6.1.0-47-amd64" -> [6, 1]. */
export function kernelVersion(release = os.release()): [number, number] {
  const m = /^(\d+)\.(\d+)/.exec(release);
  return m ? [Number(m[1]), Number(m[2])] : [0, 0];
}

function atLeast(v: [number, number], major: number, minor: number): boolean {
  return v[0] > major || (v[0] === major && v[1] >= minor);
}

/** tcx: a SCHED_CLS link of type TCX_INGRESS on a missing ifindex gives ENODEV where tcx exists, EINVAL where not. */
function probeTcx(): boolean {
  const fd = loadTrivialTcProg();
  if (fd < 0) return false;
  try {
    const r = linkCreateRaw(fd, 0x7ffffff0, BPF_TCX_INGRESS);
    if (r >= 0) {
      closeFd(r);
      return true;
    }
    return r === -19; // ENODEV: the attach type is known, the device is not
  } finally {
    closeFd(fd);
  }
}

function probeActPedit(): boolean {
  if (fs.existsSync('/sys/module/act_pedit')) return true;
  const rel = os.release();
  for (const f of [`/lib/modules/${rel}/modules.builtin`, `/lib/modules/${rel}/modules.dep`]) {
    try {
      if (/\bact_pedit\.ko/.test(fs.readFileSync(f, 'utf8'))) return true;
    } catch {
      /* no module tree */
    }
  }
  return false;
}

function overrides(env: NodeJS.ProcessEnv): Partial<Record<FeatureName, boolean>> {
  const out: Partial<Record<FeatureName, boolean>> = {};
  const raw = env.NEUV_BPF_FEATURES;
  if (!raw) return out;
  const alias: Record<string, FeatureName> = {
    tcx: 'tcx',
    redirect_peer: 'redirectPeer',
    redirectpeer: 'redirectPeer',
    pkt_type_fix: 'pktTypeFix',
    pkttypefix: 'pktTypeFix',
    act_pedit: 'actPedit',
    actpedit: 'actPedit',
    btf: 'btf',
  };
  for (const part of raw.split(',')) {
    const [k, v] = part.split('=');
    const name = alias[(k ?? '').trim().toLowerCase()];
    if (!name || (v !== '0' && v !== '1')) {
      throw new NeuvError(`NEUV_BPF_FEATURES: cannot parse '${part}' (expected name=0|1 with name tcx, redirect_peer, pkt_type_fix, act_pedit, btf)`, ExitCode.USAGE);
    }
    out[name] = v === '1';
  }
  return out;
}

let cached: Features | undefined;

export function features(env: NodeJS.ProcessEnv = process.env): Features {
  if (cached) return cached;
  const v = kernelVersion();
  const f: Features = {
    kernel: os.release(),
    btf: fs.existsSync('/sys/kernel/btf/vmlinux'),
    tcx: probeTcx(),
    redirectPeer: probeTcHelper(BPF_FUNC_redirect_peer),
    pktTypeFix: !atLeast(v, 6, 15),
    actPedit: probeActPedit(),
    libbpf: libbpfVersion(),
  };
  Object.assign(f, overrides(env));
  log('features').debug(f, 'kernel features');
  cached = f;
  return f;
}

/** Throws "not supported by this kernel (needs >= X)" unless the feature is there. */
export function requireFeature(name: FeatureName, what: string): void {
  if (!features()[name]) {
    throw new NeuvError(`${what}: not supported by this kernel ${os.release()} (needs ${FEATURE_NEEDS[name]})`, ExitCode.KERNEL);
  }
}

/** For tests: forget the cache. */
export function resetFeatureCache(): void {
  cached = undefined;
}
