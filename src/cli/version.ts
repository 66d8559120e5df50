/** `neuv-bpf version`: what a bug report needs (package, libbpf, kernel, features). */
import { CommandRegistrar, printJson } from './context';
import { packageVersion } from '../root';
import { features, type Features } from '../features';

export interface VersionInfo {
  version: string;
  node: string;
  features: Partial<Features>;
  /** Why the features could not be probed (they need CAP_BPF), if so. */
  probeError?: string;
}

export { packageVersion };

export function versionInfo(): VersionInfo {
  const info: VersionInfo = { version: packageVersion(), node: process.version, features: {} };
  try {
    info.features = features();
  } catch (e) {
    info.probeError = (e as Error).message;
  }
  return info;
}

const yn = (b: boolean | undefined) => (b === undefined ? 'unknown' : b ? 'yes' : 'no');

export const registerVersionCommands: CommandRegistrar = (program, ctx) => {
  program
    .command('version')
    .description('package, libbpf and kernel versions, and the kernel features the datapath uses (for bug reports)')
    .option('--json', 'print as JSON')
    .action(() => {
      const c = ctx();
      const v = versionInfo();
      if (c.json) {
        printJson(c, v);
        return;
      }
      const f = v.features;
      c.out(
        [
          `neuv-bpf ${v.version} (node ${v.node})`,
          `libbpf        ${f.libbpf ?? 'unknown'}`,
          `kernel        ${f.kernel ?? 'unknown'}`,
          `BTF           ${yn(f.btf)}`,
          `tcx           ${yn(f.tcx)}${f.tcx === false ? ' (clsact + cls_bpf is used)' : ''}`,
          `redirect_peer ${yn(f.redirectPeer)}`,
          `pkt_type fix  ${yn(f.pktTypeFix)}${f.pktTypeFix ? ' (kernel < 6.15: the programs set PACKET_HOST before redirect_peer)' : ''}`,
          `act_pedit     ${yn(f.actPedit)}${f.actPedit === false ? " (NeuVector's tc FWD rules cannot be installed here)" : ''}`,
          ...(v.probeError ? [`(probes failed: ${v.probeError})`] : []),
        ].join('\n'),
      );
    });
};
