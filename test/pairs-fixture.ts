/**
 * What the pair suites (pairs*.test.ts) share: the maps read back with
 * bpftool, veth pairs made in one `ip -batch`, their MACs.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Netns, sh } from './helpers';
import { MapName, mapPinPath } from '../src/pins';

export interface PortDump {
  peer_ifindex: number;
  flags: number;
  id: number;
  role: number;
  mode: number;
  mac: number[];
}

export function dump<T>(pins: string, map: MapName): Array<{ key: number; value: T }> {
  const rows = JSON.parse(sh('bpftool', ['-j', 'map', 'dump', 'pinned', mapPinPath(pins, map)]) || '[]') as Array<{
    formatted: { key: number; value?: T; values?: Array<{ cpu: number; value: T }> };
  }>;
  return rows.map((r) => ({ key: r.formatted.key, value: (r.formatted.value ?? r.formatted.values) as T }));
}

export function ports(pins: string): Map<number, PortDump> {
  return new Map(dump<PortDump>(pins, 'ports').map((r) => [r.key, r.value]));
}

export function ifindexOf(ns: Netns, dev: string): number {
  return (JSON.parse(ns.ip('-j', 'link', 'show', 'dev', dev)) as Array<{ ifindex: number }>)[0]!.ifindex;
}

/** The program name attached at our place on a port's ingress, or undefined. */
export function hookProg(ns: Netns, pins: string, dev: string): string | undefined {
  const link = path.join(pins, `link_${ifindexOf(ns, dev)}`);
  if (fs.existsSync(link)) {
    const l = JSON.parse(sh('bpftool', ['-j', 'link', 'show', 'pinned', link])) as { prog_id: number };
    return (JSON.parse(sh('bpftool', ['-j', 'prog', 'show', 'id', String(l.prog_id)])) as { name: string }).name;
  }
  const f = ns.exec('tc', ['filter', 'show', 'dev', dev, 'ingress']);
  const m = /handle 0x4e56 (\w+):\[\d+\] direct-action/.exec(f);
  return m?.[1];
}

/** Adds a non-veth device: a dummy where the kernel has it, else a bridge. */
export function addNonVeth(ns: Netns, name: string): string {
  const r = sh('ip', ['-n', ns.name, 'link', 'add', name, 'type', 'dummy'], { allowFail: true });
  void r;
  if (!ns.ip('link', 'show').includes(`${name}:`)) ns.ip('link', 'add', name, 'type', 'bridge');
  return name;
}

/** veth pairs vinN<->wlN and vexN<->hN for N in 1..n, all inside ns, all up. */
// One `ip -batch` rather than veth() per pair: one process however many (the 1,000-pair test uses it too).
export function addVeths(ns: Netns, n: number): void {
  const lines: string[] = [];
  for (let i = 1; i <= n; i++) {
    lines.push(`link add vin${i} type veth peer name wl${i}`, `link add vex${i} type veth peer name h${i}`);
    for (const d of [`vin${i}`, `wl${i}`, `vex${i}`, `h${i}`]) lines.push(`link set dev ${d} up`);
  }
  ns.ipBatch(lines);
}

export const MAC1 = '02:00:00:00:00:01';
export const MAC2 = '02:00:00:00:00:02';

/** A u32 as bpftool's key bytes (little-endian, decimal). */
export function u32Bytes(n: number): string[] {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return [...b].map(String);
}
