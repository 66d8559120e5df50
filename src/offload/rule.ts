/**
 * The rule of automatic offload (`serve --offload RULE`, docs/flow-offload.md
 * "Automatic offload"): which of the sessions NeuVector's DP has decided
 * get their decision written into neuv_flows, and how long it holds.
 *
 *   after=N        the DP has seen at least N packets of the session each way (default 1)
 *   oneway         also a session whose server side sent nothing (a UDP stream without replies),
 *                  once its client side sent N
 *   ports=P[:P..]  only sessions to these server ports (P or P-Q)
 *   apps=A[:A..]   only sessions of these NeuVector application ids (DPMsgSession.Application)
 *   proto=tcp|udp  only this protocol (default both)
 *   deny=yes|no    sessions the DP denies (policy action deny) dropped in the kernel (default yes)
 *   idle=S         an entry ends after S seconds without a frame (default 30)
 *   recheck=S      an entry ends S seconds after it was written, so the flow's next frame goes to
 *                  the DP, which applies a policy changed meanwhile (default 10)
 *   every=MS       how often the DP's sessions are read (default 100)
 *
 * 'off' is no rule. One parser, for the option and for PUT /v1/offload; the
 * rule is kept (ruleText) in /run/neuv-bpf/<pin root>.offload.json, so a
 * restarted service resumes it.
 */
import { UsageError } from '../errors';
import { readLockDirFile, writeLockDirFile, lockDirFile } from '../lock';
import * as fs from 'node:fs';
import { FLOW_SECONDS, L4_PORT, Range, parseDecimal, parseInteger } from '../numbers';
import { POLICY_ACTION, SESSION_FLAG, TCP_STATE_ESTABLISHED } from '../dp/client';
import type { DpSession } from '../dp/client';

export interface OffloadRule {
  after: number;
  oneway: boolean;
  /** Server port ranges [from, to]; undefined: any. */
  ports?: Array<[number, number]>;
  apps?: number[];
  /** IP protocols: 6, 17. */
  protos: number[];
  deny: boolean;
  idleS: number;
  recheckS: number;
  everyMs: number;
}

const AFTER: Range = { min: 1, max: 1000000, unit: 'packets' };
const APP: Range = { min: 1, max: 0xffff };
const EVERY_MS: Range = { min: 10, max: 60000, unit: 'milliseconds' };
const KEYS = ['after', 'oneway', 'ports', 'apps', 'proto', 'deny', 'idle', 'recheck', 'every'];

export const DEFAULT_RULE: OffloadRule = { after: 1, oneway: false, protos: [6, 17], deny: true, idleS: 30, recheckS: 10, everyMs: 100 };

/** Parses a rule ('after=20,ports=80:443,idle=30'); undefined for 'off'. Errors name `what`. */
export function parseOffloadRule(text: string, what = '--offload'): OffloadRule | undefined {
  const t = text.trim();
  if (t === 'off') return undefined;
  if (t === '') throw new UsageError(`${what} is empty (a rule such as after=20,ports=80:443, or off)`);
  const r: OffloadRule = { ...DEFAULT_RULE, protos: [...DEFAULT_RULE.protos] };
  const seen = new Set<string>();
  for (const item of t.split(',')) {
    const eq = item.indexOf('=');
    const key = (eq < 0 ? item : item.slice(0, eq)).trim();
    const val = eq < 0 ? undefined : item.slice(eq + 1).trim();
    if (!KEYS.includes(key)) throw new UsageError(`${what}: unknown key '${key}' (expected ${KEYS.join(', ')})`);
    if (seen.has(key)) throw new UsageError(`${what}: '${key}' given twice`);
    seen.add(key);
    const need = () => {
      if (val === undefined || val === '') throw new UsageError(`${what}: '${key}' needs a value (${key}=...)`);
      return val;
    };
    const w = `${what} ${key}`;
    switch (key) {
      case 'after':
        r.after = parseInteger(need(), w, AFTER);
        break;
      case 'oneway':
        if (val !== undefined) throw new UsageError(`${what}: 'oneway' takes no value`);
        r.oneway = true;
        break;
      case 'ports':
        r.ports = need().split(':').map((p) => {
          const m = /^([^-]+)(?:-(.+))?$/.exec(p);
          const a = parseInteger(m?.[1] ?? p, w, L4_PORT);
          const b = m?.[2] === undefined ? a : parseInteger(m[2], w, L4_PORT);
          if (b < a) throw new UsageError(`${w}: range ${p} ends before it starts`);
          return [a, b] as [number, number];
        });
        break;
      case 'apps':
        r.apps = need().split(':').map((a) => parseInteger(a, w, APP));
        break;
      case 'proto': {
        const v = need();
        if (v !== 'tcp' && v !== 'udp') throw new UsageError(`${w} '${v}' is not tcp or udp`);
        r.protos = [v === 'tcp' ? 6 : 17];
        break;
      }
      case 'deny': {
        const v = need();
        if (v !== 'yes' && v !== 'no') throw new UsageError(`${w} '${v}' is not yes or no`);
        r.deny = v === 'yes';
        break;
      }
      case 'idle':
        r.idleS = parseDecimal(need(), w, FLOW_SECONDS);
        break;
      case 'recheck':
        r.recheckS = parseDecimal(need(), w, FLOW_SECONDS);
        break;
      case 'every':
        r.everyMs = parseInteger(need(), w, EVERY_MS);
        break;
    }
  }
  return r;
}

/** The rule as parseOffloadRule reads it back (every key, defaults included). */
export function ruleText(r: OffloadRule): string {
  return [
    `after=${r.after}`,
    ...(r.oneway ? ['oneway'] : []),
    ...(r.ports ? [`ports=${r.ports.map(([a, b]) => (a === b ? `${a}` : `${a}-${b}`)).join(':')}`] : []),
    ...(r.apps ? [`apps=${r.apps.join(':')}`] : []),
    ...(r.protos.length === 1 ? [`proto=${r.protos[0] === 6 ? 'tcp' : 'udp'}`] : []),
    `deny=${r.deny ? 'yes' : 'no'}`,
    `idle=${r.idleS}`,
    `recheck=${r.recheckS}`,
    `every=${r.everyMs}`,
  ].join(',');
}

/** Policy actions under which the DP lets a session's frames through (open, learn, allow, violate: monitor mode). */
const PASSES: readonly number[] = [POLICY_ACTION.open, POLICY_ACTION.learn, POLICY_ACTION.allow, POLICY_ACTION.violate];

/**
 * What the rule makes of one session the DP lists: 'allow' (its frames
 * straight to the peer), 'deny' (dropped in the kernel) or undefined (left
 * to the DP). Only IPv4 TCP/UDP sessions, inline (not the DP's TAP), decided
 * (not "check" actions), TCP established both ways.
 */
export function decideSession(s: DpSession, r: OffloadRule): 'allow' | 'deny' | undefined {
  if (s.etherType !== 0x0800 || !r.protos.includes(s.ipProto)) return undefined;
  // Temporarily open sessions (DPSESS_FLAG_TMP_OPEN: an endpoint with no policy yet, an unknown IP) are
  // taken too: the DP lets them through, and checks them again when the entry's recheck deadline sends the
  // flow back to it.
  if (s.flags & (SESSION_FLAG.tap | SESSION_FLAG.xff)) return undefined;
  if (s.policyAction === POLICY_ACTION.deny) return r.deny ? 'deny' : undefined;
  if (!PASSES.includes(s.policyAction)) return undefined;
  if (r.ports && !r.ports.some(([a, b]) => s.serverPort >= a && s.serverPort <= b)) return undefined;
  if (r.apps && !r.apps.includes(s.application)) return undefined;
  if (s.clientPkts < r.after) return undefined;
  if (s.serverPkts < r.after && !(r.oneway && s.serverPkts === 0)) return undefined;
  if (s.ipProto === 6 && (s.clientState !== TCP_STATE_ESTABLISHED || s.serverState !== TCP_STATE_ESTABLISHED)) return undefined;
  return 'allow';
}

// ---------------------------------------------------------------- kept across restarts

const FILE = 'offload.json';

export function offloadRulePath(pinRoot: string): string {
  return lockDirFile(pinRoot, FILE);
}

/** The rule kept for the pin root (undefined: none, or off). */
export function readOffloadRule(pinRoot: string): OffloadRule | undefined {
  const text = readLockDirFile(pinRoot, FILE);
  if (text === undefined) return undefined;
  let j: { version?: unknown; rule?: unknown };
  try {
    j = JSON.parse(text) as typeof j;
  } catch {
    throw new UsageError(`${offloadRulePath(pinRoot)} is not JSON: remove it, or set the rule again (serve --offload RULE)`);
  }
  if (j.version !== 1 || typeof j.rule !== 'string') throw new UsageError(`${offloadRulePath(pinRoot)} is not a version 1 offload rule: remove it, or set the rule again`);
  return parseOffloadRule(j.rule, offloadRulePath(pinRoot));
}

/** Keeps the rule (atomically), or removes the file for none. */
export function writeOffloadRule(pinRoot: string, r: OffloadRule | undefined): void {
  if (!r) {
    fs.rmSync(offloadRulePath(pinRoot), { force: true });
    return;
  }
  writeLockDirFile(pinRoot, FILE, JSON.stringify({ version: 1, rule: ruleText(r) }) + '\n');
}
