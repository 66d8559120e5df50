/**
 * NeuVector's FWD rules on a kernel without act_pedit (CONFIG_NET_ACT_PEDIT
 * unset, as here): each `u32 <match> action pedit <rewrite> action mirred`
 * filter of FwdPortPair (src/migrate/nvtc.ts) becomes `bpf obj <prog> action mirred`,
 * where the program is a cls_bpf classifier (not direct-action) doing the
 * same match and the same 6-byte MAC rewrite and returning "matched"; the
 * filter's mirred actions are NeuVector's own, unchanged. Prefs, protocols,
 * devices and the order of the rules are NeuVector's. Used by bench/nvdp.ts
 * to run NeuVector's tc pipe with its real DP.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { NvPair, nvAttachRules, nvPairRules } from '../src/migrate/nvtc';
import { sh } from './util';

/** Match `match` at byte `mo` of the frame (0 DA, 6 SA); then write `set` at `so`. */
interface Rewrite {
  mo: 0 | 6;
  match: Uint8Array;
  so: 0 | 6;
  set: Uint8Array;
}

const bytes = (m: Uint8Array) => Array.from(m, (b) => `0x${b.toString(16).padStart(2, '0')}`).join(', ');

function compile(dir: string, name: string, r: Rewrite): string {
  const src = path.join(dir, `${name}.bpf.c`);
  const obj = path.join(dir, `${name}.bpf.o`);
  fs.writeFileSync(
    src,
    [
      '#include <linux/bpf.h>',
      '#include <bpf/bpf_helpers.h>',
      'char LICENSE[] SEC("license") = "Dual BSD/GPL";',
      'SEC("tc") int nv_pedit(struct __sk_buff *skb) {',
      '  unsigned char m[6];',
      `  const unsigned char want[6] = { ${bytes(r.match)} };`,
      `  const unsigned char set[6] = { ${bytes(r.set)} };`,
      `  if (bpf_skb_load_bytes(skb, ${r.mo}, m, 6)) return 0;`,
      '  if (m[0] != want[0] || m[1] != want[1] || m[2] != want[2] || m[3] != want[3] || m[4] != want[4] || m[5] != want[5])',
      '    return 0; /* no match: the next filter */',
      `  bpf_skb_store_bytes(skb, ${r.so}, set, 6, 0);`,
      '  return -1; /* matched: run the filter\'s actions (mirred) */',
      '}',
      '',
    ].join('\n'),
  );
  const arch = sh('gcc', ['-print-multiarch'], { allowFail: true }).trim() || 'x86_64-linux-gnu';
  sh(process.env.CLANG ?? 'clang', ['-O2', '-g', '-target', 'bpf', '-Wall', `-I/usr/include/${arch}`, '-c', src, '-o', obj]);
  return obj;
}

/**
 * The qdiscs and filters of FwdPortPair for p (vbr-neuv's ingress qdisc is
 * nvConnect's), each u32 + pedit replaced by its classifier (compiled into dir).
 */
export function nvPeditRules(p: NvPair, dir: string): string[][] {
  const rules = nvPairRules(p, 'fwd', { pedit: true });
  // FwdPortPair's order: vex ip, vex all, vin ip, vin all, vbr-neuv DA == UCMAC, vbr-neuv SA == UCMAC.
  const rewrites: Record<number, Rewrite> = {
    0: { mo: 0, match: p.mac, so: 0, set: p.ucmac },
    2: { mo: 6, match: p.mac, so: 6, set: p.ucmac },
    4: { mo: 0, match: p.ucmac, so: 0, set: p.mac },
    5: { mo: 6, match: p.ucmac, so: 6, set: p.mac },
  };
  const out = rules.map((r, i) => {
    const w = rewrites[i];
    if (!w) return r;
    const u32 = r.indexOf('u32');
    const firstMirred = r.findIndex((x, k) => x === 'action' && r[k + 1] === 'mirred');
    if (u32 < 0 || firstMirred < 0 || !r.slice(u32, firstMirred).includes('pedit')) throw new Error(`nvpedit: rule ${i} is not u32 + pedit + mirred: ${r.join(' ')}`);
    return [...r.slice(0, u32), 'bpf', 'obj', compile(dir, `nv-pedit-${i}`, w), 'sec', 'tc', ...r.slice(firstMirred)];
  });
  return [...nvAttachRules(p), ...out];
}
