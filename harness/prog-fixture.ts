/**
 * The real datapath object under BPF_PROG_TEST_RUN, for the kernel suites
 * and the benchmarks (bench/progcost.ts, bench/trace.ts).
 *
 * ProgFixture.create() (in a `before` hook, after requireKernel) moves this
 * process's main thread into a private network namespace with a veth pair
 * interface, so the two ingress ifindexes the tests use (lo and the veth)
 * exist, TAP clones sent to the DP port stay in that namespace, and an ifindex
 * known to be absent makes the clone fail. It loads build/neuv.bpf.o with its
 * by-name pins under a private pin root. Everything is undone by
 * runCleanups() (the namespace is left before it is deleted).
 *
 * test_run facts this relies on (kernel 6.18, checked):
 * - skb->ingress_ifindex is 0; skb->ifindex is ctx_in.ifindex (lo when 0 or
 *   1), so the programs' fallback to skb->ifindex is what finds the port.
 * - A redirect returns TC_ACT_REDIRECT and forwards nothing (where and
 *   whether via redirect_peer is not observable), but bpf_clone_redirect
 *   really transmits the copy.
 * - The kernel refuses (EINVAL) an IPv4 frame with fewer than 20 bytes after
 *   the Ethernet header and an IPv6 one with fewer than 40.
 */
import * as fs from 'node:fs';
import { BpfObject, MapFd, ifNameToIndex, setns, CLONE_NEWNET, testRun } from '../src/bpf';
import {
  addGlobal,
  addStats,
  emptyStats,
  Config,
  encodeId,
  encodePort,
  encodeStats,
  REASON_COUNT,
  Stats,
  u32Key,
} from '../src/layout';
import type { PortEntry as PortValue } from '../src/layout';
import { updateConfig } from '../src/config';
import { makePinRoot } from './kernel';
import { makeNetns, veth as makeVeth } from './net';
import { OBJ, onCleanup } from './proc';

/** The programs, by the port they run on. */
export type Hook = 'vin' | 'vex' | 'vbr';

/** A neuv_ports entry (struct neuv_port, as src/layout/ decodes it) with its key. */
export interface PortEntry extends Omit<PortValue, 'mac'> {
  ifindex: number;
  mac: Uint8Array /* 6 */;
}

/** What seed() writes: neuv_ports, neuv_ids, neuv_config (the reference model's state is one). */
export interface MapState {
  /** neuv_ports, by ingress ifindex. */
  ports: Map<number, PortEntry>;
  /** neuv_ids, by port id. */
  ids: Map<number, { vinIfindex: number; vexIfindex: number }>;
  /** neuv_config.dp_ifindex; 0 means NEUV_VBR_IFINDEX. */
  dpIfindex: number;
  /** neuv_config.flags (NEUV_CFG_*; default 0). */
  configFlags?: number;
}

export const SKB_CTX_SIZE = 192; // sizeof(struct __sk_buff) on 6.x; the tail must be zero
export const SKB_CTX_IFINDEX = 40; // offsetof(struct __sk_buff, ifindex)

/** test_run refuses IP frames too short for their L3 header; see the file comment. */
export function kernelAccepts(frame: Uint8Array): boolean {
  if (frame.length < 14) return false;
  const et = (frame[12]! << 8) | frame[13]!;
  if (et === 0x0800) return frame.length >= 14 + 20;
  if (et === 0x86dd) return frame.length >= 14 + 40;
  return true;
}

export interface RunResult {
  retval: number;
  dataOut: Buffer;
}

export class ProgFixture {
  /** Ingress ifindexes that exist in the namespace: lo and one end of a veth pair that is up. */
  readonly lo = 1;
  readonly veth: number;
  /** An ifindex no device has in the namespace (bpf_clone_redirect to it fails). */
  readonly absent = 0x7ffffff0;
  readonly obj: BpfObject;
  readonly progs: Record<Hook, number>;
  readonly ports: MapFd;
  readonly ids: MapFd;
  readonly stats: MapFd;
  readonly global: MapFd;
  readonly config: MapFd;
  private readonly ctx = new Map<number, Buffer>();

  private constructor(obj: BpfObject, veth: number, readonly pinRoot: string) {
    this.obj = obj;
    this.veth = veth;
    this.progs = { vin: obj.progFd('neuv_vin'), vex: obj.progFd('neuv_vex'), vbr: obj.progFd('neuv_vbr') };
    this.ports = obj.map('neuv_ports');
    this.ids = obj.map('neuv_ids');
    this.stats = obj.map('neuv_stats');
    this.global = obj.map('neuv_global');
    this.config = obj.map('neuv_config');
  }

  /** Private netns + loaded object; cleanup registered with the helpers. */
  static create(rodata?: Record<string, number>): ProgFixture {
    const ns = makeNetns();
    makeVeth({ ns, name: 'nbtv0' }, { ns, name: 'nbtv1' });
    const home = fs.openSync('/proc/self/ns/net', 'r');
    const there = fs.openSync(`/run/netns/${ns.name}`, 'r');
    setns(there, CLONE_NEWNET, ns.name);
    fs.closeSync(there);
    // Runs before the namespace is deleted (cleanups run last-in first-out).
    onCleanup(() => {
      setns(home, CLONE_NEWNET, 'the test process netns');
      fs.closeSync(home);
    });
    const veth = ifNameToIndex('nbtv0');
    if (veth <= 1) throw new Error('veth nbtv0 not found in the test netns');
    const pinRoot = makePinRoot();
    const obj = BpfObject.open(OBJ, { pinRoot, rodata });
    onCleanup(() => obj.close());
    obj.load();
    return new ProgFixture(obj, veth, pinRoot);
  }

  /** Empties every map and sets neuv_config.dp_ifindex and flags. */
  clear(dpIfindex = 0, flags = 0): void {
    for (const m of [this.ports, this.ids, this.stats]) for (const k of m.keys()) m.delete(k);
    this.writeConfig(() => ({ dpIfindex, flags, traceUntil: 0n }));
  }

  /** neuv_config rewritten by fn, under the config lock as every writer does (src/config.ts updateConfig). */
  writeConfig(fn: (c: Config) => Config): Config {
    return updateConfig(this.pinRoot, this.config, fn);
  }

  /** Writes a model state into the maps (after clear); stats entries only for statsIds. */
  seed(state: MapState, statsIds: Iterable<number>): void {
    this.clear(state.dpIfindex, state.configFlags ?? 0);
    for (const [ifindex, p] of state.ports) {
      this.ports.update(
        u32Key(ifindex),
        encodePort({ peerIfindex: p.peerIfindex, flags: p.flags, id: p.id, role: p.role, mode: p.mode, mac: Buffer.from(p.mac) }),
      );
    }
    for (const [id, e] of state.ids) this.ids.update(u32Key(id), encodeId(e));
    for (const id of statsIds) this.stats.update(u32Key(id), encodeStats(emptyStats()));
  }

  run(hook: Hook, frame: Uint8Array, ingressIfindex = this.lo): RunResult {
    let ctx = this.ctx.get(ingressIfindex);
    if (!ctx) {
      ctx = Buffer.alloc(SKB_CTX_SIZE);
      ctx.writeUInt32LE(ingressIfindex, SKB_CTX_IFINDEX);
      this.ctx.set(ingressIfindex, ctx);
    }
    const r = testRun(this.progs[hook], Buffer.from(frame), { ctxIn: ctx });
    return { retval: r.retval, dataOut: r.dataOut };
  }

  /** neuv_stats[id] summed over CPUs, or undefined if there is no entry. */
  readStats(id: number): Stats | undefined {
    const v = this.stats.lookup(u32Key(id));
    if (!v) return undefined;
    const s = emptyStats();
    for (const c of this.stats.perCpuValues(v)) addStats(s, c);
    return s;
  }

  /** neuv_global.reason[] summed over CPUs. */
  readGlobal(): bigint[] {
    const v = this.global.lookup(u32Key(0));
    const g = new Array<bigint>(REASON_COUNT).fill(0n);
    if (v) for (const c of this.global.perCpuValues(v)) addGlobal(g, c);
    return g;
  }
}

/** after - before, per [dir][verdict], as "dir.verdict:packets/bytes" strings for readable diffs. */
export function statsDelta(before: Stats, after: Stats): string[] {
  const out: string[] = [];
  for (let d = 0; d < after.length; d++) {
    for (let v = 0; v < after[d]!.length; v++) {
      const p = after[d]![v]!.packets - before[d]![v]!.packets;
      const b = after[d]![v]!.bytes - before[d]![v]!.bytes;
      if (p !== 0n || b !== 0n) out.push(`${d}.${v}:${p}/${b}`);
    }
  }
  return out;
}

/** Reason indexes whose counter moved, with how much: "r:n". */
export function globalDelta(before: bigint[], after: bigint[]): string[] {
  const out: string[] = [];
  for (let r = 0; r < after.length; r++) if (after[r] !== before[r]) out.push(`${r}:${after[r]! - before[r]!}`);
  return out;
}
