/**
 * A typed client of NeuVector's enforcer DP control channel, for agents
 * written in TypeScript and for the tests, demo and benchmarks
 * (docs/neuvector-dp.md).
 *
 * The channel (the DP's dp/ctrl.c): JSON datagrams to the unix datagram
 * socket /tmp/dp_listen.sock, one object per datagram whose keys name the
 * requests ("ctrl_add_mac": {...}). Configuration requests get no reply.
 * Queries are answered with binary messages (defs.h: a 4-byte DPMsgHdr
 * {Kind, More, Length (big-endian)} and a body in network byte order, C
 * struct layout) sent to the address the request came from, so the client
 * binds its own socket first (NeuVector's agent binds /tmp/dp_client.<pid>).
 * The DP handles datagrams one at a time, in order: a keep-alive answered
 * after a configuration request proves that request was handled.
 *
 * `root` names the DP's filesystem root as seen from here: '' for a DP in
 * this mount namespace, /proc/<pid>/root for one in a private one
 * (tools/nvdp-run.c). Both sockets then live in the DP's /tmp, and the
 * reply path, which the DP resolves itself, means the same socket there.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import { UsageError } from '../errors';
import { validateIfName } from '../link';
import { formatMac, parseMac } from '../mac';
import { UnixDgram } from '../bpf/unixgram';

export const DP_SOCKET = '/tmp/dp_listen.sock';

/** DPMsgHdr.Kind values (defs.h). */
export const DP_KIND = {
  sessionList: 2,
  sessionCount: 3,
  deviceCounter: 4,
  macStats: 8,
  deviceStats: 9,
  keepAlive: 10,
} as const;

/** DPMsgSession.Flags (defs.h DPSESS_FLAG_*) the offloader reads. */
export const SESSION_FLAG = { ingress: 0x1, tap: 0x2, mid: 0x4, xff: 0x10, tmpOpen: 0x100 } as const;
/** DPMsgSession.ClientState/ServerState of a TCP session: Linux's TCP_ESTABLISHED (the DP's wing states). */
export const TCP_STATE_ESTABLISHED = 1;

/** Policy actions (defs.h DP_POLICY_ACTION_*). */
export const POLICY_ACTION = { open: 0, learn: 1, allow: 2, checkVh: 3, checkNbe: 4, checkApp: 5, violate: 6, deny: 7 } as const;
export type PolicyActionName = keyof typeof POLICY_ACTION;
/** ctrl_cfg_policy "flag": first and last message of one policy (defs.h MSG_START/MSG_END). */
const MSG_START = 1;
const MSG_END = 2;
/** ctrl_cfg_policy "cmd" (defs.h CFG_ADD/CFG_DELETE). */
const CFG_ADD = 1;
/** ctrl_cfg_policy "dir": apply to egress and/or ingress (defs.h DP_POLICY_APPLY_*). */
export const POLICY_APPLY = { egress: 1, ingress: 2, both: 3 } as const;

/**
 * The packet sockets of the netns a process is in, bound to ifindex (from
 * /proc/<pid>/net/packet): a DP's ring on vth-neuv is one (the watcher's check).
 */
export function packetSocketsOn(pid: number, ifindex: number): number {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/net/packet`, 'utf8');
  } catch {
    return 0;
  }
  // sk RefCnt Type Proto Iface R Rmem User Inode
  return text.split('\n').slice(1).filter((l) => Number(l.trim().split(/\s+/)[4]) === ifindex).length;
}

export class DpTimeoutError extends Error {}

/** A workload endpoint as ctrl_add_mac takes it. */
export interface DpEndpoint {
  /** The port the DP reads it on (default vth-neuv). */
  iface?: string;
  /** The workload MAC M. */
  mac: string;
  /** 4e:65:75:56:<id>: frames to/from the workload carry it on vth-neuv. */
  ucmac: string;
  /** ff:ff:ff:00:<id>. */
  bcmac: string;
  /** The workload's IPv4 addresses (pips). */
  ips?: string[];
}

/** A port a workload listens on (ctrl_cfg_mac "apps"). */
export interface DpApp {
  port: number;
  /** 6 TCP, 17 UDP. */
  ipProto: number;
  /** NeuVector's application id (0: unknown). */
  app?: number;
  server?: number;
}

export interface PolicyRule {
  id: number;
  /** Source range (default any: 0.0.0.0 - 255.255.255.255). */
  sip?: string;
  sipr?: string;
  /** Destination range (dipr defaults to dip). */
  dip: string;
  dipr?: string;
  /** Destination port range (portr defaults to port; 0-65535 when both are absent). */
  port?: number;
  portr?: number;
  /** IP protocol: 6 TCP, 17 UDP, 1 ICMP, 0 TCP and UDP. */
  proto: number;
  action: PolicyActionName;
  /** Ingress (towards the workload) or egress rule. */
  ingress: boolean;
}

export interface PolicyConfig {
  /** Workload MACs the policy applies to. */
  macs: string[];
  /** What traffic matching no rule gets (default allow). */
  defaultAction?: PolicyActionName;
  /** Which directions the rules apply to (default both). */
  apply?: keyof typeof POLICY_APPLY;
  rules: PolicyRule[];
}

export interface SessionCount {
  cur: number;
  tcp: number;
  udp: number;
  icmp: number;
  ip: number;
}

/** One DPMsgSession (140 bytes). */
export interface DpSession {
  id: number;
  epMac: string;
  etherType: number;
  clientMac: string;
  serverMac: string;
  clientIp: string;
  serverIp: string;
  clientPort: number;
  serverPort: number;
  ipProto: number;
  clientPkts: number;
  serverPkts: number;
  clientBytes: number;
  serverBytes: number;
  clientState: number;
  serverState: number;
  idle: number;
  age: number;
  /** NeuVector's application id (DPI_APP_*; 0 while unknown). */
  application: number;
  policyId: number;
  policyAction: number;
  flags: number;
}

/** The DPMsgDeviceCounter fields tests and benchmarks read. */
export interface DeviceCounter {
  rxPackets: bigint;
  rxDropPackets: bigint;
  txPackets: bigint;
  txDropPackets: bigint;
  errorPackets: bigint;
  noWorkloadPackets: bigint;
  ipv4Packets: bigint;
  ipv6Packets: bigint;
  tcpPackets: bigint;
  udpPackets: bigint;
  icmpPackets: bigint;
  otherPackets: bigint;
  totalSessions: bigint;
  tcpSessions: bigint;
  udpSessions: bigint;
  icmpSessions: bigint;
}

export interface DpClientOptions {
  /** The DP's filesystem root as seen from here ('' or /proc/<pid>/root). */
  root?: string;
  /** Default reply timeout (ms). */
  timeoutMs?: number;
}

const SESSION_SIZE = 140;
const DEVICE_COUNTER_SIZE = 568;

function mac(s: string, what: string): string {
  try {
    return formatMac(parseMac(s));
  } catch {
    throw new UsageError(`${what} ${JSON.stringify(s)} is not a MAC (aa:bb:cc:dd:ee:ff)`);
  }
}

function ip4(s: string, what: string): string {
  if (!net.isIPv4(s)) throw new UsageError(`${what} ${JSON.stringify(s)} is not an IPv4 address`);
  return s;
}

function u16(n: number, what: string): number {
  if (!Number.isInteger(n) || n < 0 || n > 0xffff) throw new UsageError(`${what} ${n} is not an integer in 0..65535`);
  return n;
}

function ipText(b: Buffer, etherType: number): string {
  if (etherType === 0x0800) return `${b[0]}.${b[1]}.${b[2]}.${b[3]}`;
  // Shortest form through the URL parser (it compresses zeros as RFC 5952 says).
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(b.readUInt16BE(i).toString(16));
  return new URL(`http://[${groups.join(':')}]/`).hostname.slice(1, -1);
}

/**
 * Decodes one DPMsgSession (exported for the unit tests). The DP converts
 * IPv4 sessions to network byte order but sends IPv6 ones as they are in
 * its memory (dpi_list_session skips netify_session_log for them): host
 * (little-endian) order, told apart by the EtherType reading 0xdd86.
 */
export function decodeSession(b: Buffer): DpSession {
  const le = b.readUInt16BE(10) === 0xdd86;
  const r16 = (o: number) => (le ? b.readUInt16LE(o) : b.readUInt16BE(o));
  const r32 = (o: number) => (le ? b.readUInt32LE(o) : b.readUInt32BE(o));
  const et = r16(10);
  return {
    id: r32(0),
    epMac: formatMac(b.subarray(4, 10)),
    etherType: et,
    clientMac: formatMac(b.subarray(12, 18)),
    serverMac: formatMac(b.subarray(18, 24)),
    clientIp: ipText(b.subarray(24, 40), et),
    serverIp: ipText(b.subarray(40, 56), et),
    clientPort: r16(56),
    serverPort: r16(58),
    ipProto: b[62]!,
    clientPkts: r32(64),
    serverPkts: r32(68),
    clientBytes: r32(72),
    serverBytes: r32(76),
    clientState: b[96]!,
    serverState: b[97]!,
    idle: r16(98),
    age: r32(100),
    application: r16(106),
    policyId: r32(112),
    policyAction: b[116]!,
    flags: r16(118),
  };
}

/** The ctrl_cfg_policy request of a policy, validated (a UsageError naming the field): nothing is sent. */
export function policyMessage(p: PolicyConfig): Record<string, unknown> {
  if (p.macs.length === 0) throw new UsageError('ctrl_cfg_policy needs at least one MAC');
  if (p.defaultAction !== undefined && !(p.defaultAction in POLICY_ACTION)) {
    throw new UsageError(`policy defaultAction '${p.defaultAction}' is not one of ${Object.keys(POLICY_ACTION).join(', ')}`);
  }
  const rules = p.rules.map((r) => {
    if (typeof r !== 'object' || r === null) throw new UsageError('a policy rule is not an object');
    if (!Number.isSafeInteger(r.id) || r.id < 0 || r.id > 0xffffffff) throw new UsageError(`policy rule id ${JSON.stringify(r.id)} is not an integer in 0..4294967295`);
    if (typeof r.ingress !== 'boolean') throw new UsageError(`policy rule ${r.id}: ingress must be true or false`);
    const port = r.port === undefined ? 0 : u16(r.port, 'port');
    const portr = r.portr === undefined ? (r.port === undefined ? 0xffff : port) : u16(r.portr, 'portr');
    if (!(r.action in POLICY_ACTION)) throw new UsageError(`policy action '${r.action}' is not one of ${Object.keys(POLICY_ACTION).join(', ')}`);
    return {
      id: r.id,
      sip: ip4(r.sip ?? '0.0.0.0', 'sip'),
      sipr: ip4(r.sipr ?? (r.sip === undefined ? '255.255.255.255' : r.sip), 'sipr'),
      dip: ip4(r.dip, 'dip'),
      dipr: ip4(r.dipr ?? r.dip, 'dipr'),
      port,
      portr,
      proto: u16(r.proto, 'proto'),
      action: POLICY_ACTION[r.action],
      ingress: r.ingress,
    };
  });
  return {
    ctrl_cfg_policy: {
      cmd: CFG_ADD,
      flag: MSG_START | MSG_END,
      defact: POLICY_ACTION[p.defaultAction ?? 'allow'],
      dir: POLICY_APPLY[p.apply ?? 'both'],
      mac: p.macs.map((m) => mac(m, 'mac')),
      rules,
    },
  };
}

let clients = 0;

export class DpClient {
  private chain: Promise<unknown> = Promise.resolve();
  private seq = 0;

  private constructor(
    private readonly sock: UnixDgram,
    /** The DP's control socket path, as seen from here. */
    readonly server: string,
    readonly timeoutMs: number,
  ) {}

  /** Binds the reply socket (<root>/tmp/dp_client.<pid>.<n>). Sends nothing. */
  static open(o: DpClientOptions = {}): DpClient {
    const root = o.root ?? '';
    const sock = UnixDgram.bind(`${root}/tmp/dp_client.${process.pid}.${++clients}`);
    return new DpClient(sock, `${root}${DP_SOCKET}`, o.timeoutMs ?? 2000);
  }

  /** The path replies come to (the client's bound address). */
  get replyPath(): string {
    return this.sock.path;
  }

  close(): void {
    this.sock.close();
  }

  /** Sends one request object as it is (no reply expected). */
  send(msg: Record<string, unknown>): void {
    this.sock.send(this.server, Buffer.from(JSON.stringify(msg)));
  }

  /** Runs requests that read replies one at a time. */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.chain.then(fn, fn);
    this.chain = p.catch(() => undefined);
    return p;
  }

  /** Sends `msg` and collects the replies of `kind` until one says More = 0 (or `one`: the first). */
  private ask(msg: Record<string, unknown>, kind: number, accept: (body: Buffer) => boolean, timeoutMs: number, all = false): Promise<Buffer[]> {
    return this.serial(async () => {
      this.sock.drain();
      this.send(msg);
      const got: Buffer[] = [];
      const end = Date.now() + timeoutMs;
      for (;;) {
        const d = await this.sock.recv(Math.max(0, end - Date.now()));
        if (!d) throw new DpTimeoutError(`no reply from the DP at ${this.server} to ${Object.keys(msg).join(',')} within ${timeoutMs} ms`);
        if (d.length < 4 || d[0] !== kind) continue; // a stale reply of another request
        const body = d.subarray(4);
        if (!accept(body)) continue;
        got.push(body);
        if (!all || d[1] === 0) return got;
      }
    });
  }

  /** ctrl_keep_alive: resolves with the round trip in ms; DpTimeoutError when the DP does not answer. */
  async keepAlive(timeoutMs = this.timeoutMs): Promise<number> {
    const seq = (this.seq = (this.seq + 1) >>> 0);
    const t0 = process.hrtime.bigint();
    await this.ask({ ctrl_keep_alive: { seq_num: seq } }, DP_KIND.keepAlive, (b) => b.length >= 4 && b.readUInt32BE(0) === seq, timeoutMs);
    return Number(process.hrtime.bigint() - t0) / 1e6;
  }

  /** Waits until the DP has handled everything sent before (a keep-alive as a barrier). */
  async sync(timeoutMs = this.timeoutMs): Promise<void> {
    await this.keepAlive(timeoutMs);
  }

  /** ctrl_add_srvc_port: the DP opens its ring on iface (vth-neuv) and forwards what it allows back into it. */
  addSrvcPort(iface = 'vth-neuv', jumboframe = false): void {
    this.send({ ctrl_add_srvc_port: { iface: validateIfName(iface), jumboframe } });
  }

  delSrvcPort(iface = 'vth-neuv'): void {
    this.send({ ctrl_del_srvc_port: { iface: validateIfName(iface) } });
  }

  /** ctrl_add_tap_port: NeuVector's own TAP, one ring on a container's interface in its netns. */
  addTapPort(netns: string, iface: string, epMac: string): void {
    this.send({ ctrl_add_tap_port: { netns, iface: validateIfName(iface), epmac: mac(epMac, 'epmac') } });
  }

  delTapPort(netns: string, iface: string): void {
    this.send({ ctrl_del_tap_port: { netns, iface: validateIfName(iface) } });
  }

  /** ctrl_add_mac: a workload endpoint; it starts in TAP (the DP never writes its frames back). */
  addMac(ep: DpEndpoint): void {
    this.send({
      ctrl_add_mac: {
        iface: validateIfName(ep.iface ?? 'vth-neuv'),
        mac: mac(ep.mac, 'mac'),
        ucmac: mac(ep.ucmac, 'ucmac'),
        bcmac: mac(ep.bcmac, 'bcmac'),
        oldmac: '',
        pmac: '',
        pips: (ep.ips ?? []).map((ip) => ({ ip: ip4(ip, 'pip') })),
      },
    });
  }

  /**
   * ctrl_cfg_mac: tap true (the DP only watches) or false (inline: it
   * forwards what it allows); apps: the ports the workloads listen on (they
   * replace the previous list). The DP needs the UDP ones to tell a UDP
   * flow's server side: without them a datagram to the workload makes the
   * workload the client, and its ingress rules do not match.
   */
  cfgMac(macs: string[], o: { tap?: boolean; apps?: DpApp[] }): void {
    if (macs.length === 0) throw new UsageError('ctrl_cfg_mac needs at least one MAC');
    const apps = o.apps?.map((a) => ({ port: u16(a.port, 'app port'), ip_proto: u16(a.ipProto, 'app ip_proto'), app: a.app ?? 0, server: a.server ?? 0 }));
    this.send({ ctrl_cfg_mac: { macs: macs.map((m) => mac(m, 'mac')), ...(o.tap !== undefined ? { tap: o.tap } : {}), ...(apps ? { apps } : {}) } });
  }

  delMac(m: string): void {
    this.send({ ctrl_del_mac: { mac: mac(m, 'mac') } });
  }

  /** ctrl_cfg_policy: one policy (MSG_START|MSG_END) replacing the endpoints' previous one. */
  cfgPolicy(p: PolicyConfig): void {
    this.send(policyMessage(p));
  }

  /** ctrl_count_session: current sessions by protocol. */
  async countSession(): Promise<SessionCount> {
    const [b] = await this.ask({ ctrl_count_session: {} }, DP_KIND.sessionCount, (x) => x.length >= 20, this.timeoutMs);
    return { cur: b!.readUInt32BE(0), tcp: b!.readUInt32BE(4), udp: b!.readUInt32BE(8), icmp: b!.readUInt32BE(12), ip: b!.readUInt32BE(16) };
  }

  /** ctrl_list_session: every session the DP tracks (its data threads answer in batches, then an empty last one). */
  async listSessions(): Promise<DpSession[]> {
    const bodies = await this.ask({ ctrl_list_session: {} }, DP_KIND.sessionList, () => true, this.timeoutMs, true);
    const out: DpSession[] = [];
    for (const b of bodies) {
      if (b.length < 4) continue;
      const n = b.readUInt16BE(0);
      for (let i = 0; i < n && 4 + (i + 1) * SESSION_SIZE <= b.length; i++) out.push(decodeSession(b.subarray(4 + i * SESSION_SIZE, 4 + (i + 1) * SESSION_SIZE)));
    }
    return out;
  }

  /** ctrl_counter_device: the DP's global packet and session counters (ring rx/tx included). */
  async counterDevice(): Promise<DeviceCounter> {
    const [b] = await this.ask({ ctrl_counter_device: {} }, DP_KIND.deviceCounter, (x) => x.length >= DEVICE_COUNTER_SIZE, this.timeoutMs);
    const q = (i: number) => b!.readBigUInt64BE(i * 8);
    return {
      rxPackets: q(0), rxDropPackets: q(1), txPackets: q(2), txDropPackets: q(3), errorPackets: q(4), noWorkloadPackets: q(5),
      ipv4Packets: q(6), ipv6Packets: q(7), tcpPackets: q(8), udpPackets: q(10), icmpPackets: q(11), otherPackets: q(12),
      totalSessions: q(18), tcpSessions: q(19), udpSessions: q(20), icmpSessions: q(21),
    };
  }
}
