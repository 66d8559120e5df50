/**
 * What the suites driving `neuv-bpf serve` share: the service as a child
 * process (the real CLI), its typed client, raw HTTP on its socket, `show
 * --json` without counters, and its metrics read from inside the netns it
 * runs in.
 */
import assert from 'node:assert/strict';
import { ChildProcess, spawnSync } from 'node:child_process';
import * as http from 'node:http';
import { cli, cliSpawn, onCleanup, TIME_SCALE } from './helpers';
import { waitFor } from './topology';
import { ServiceClient } from '../src/service/client';

export interface Served {
  child: ChildProcess;
  socket: string;
  client: ServiceClient;
  info: { pinRoot: string; socket: string; datapath: 'loaded' | 'adopted'; metrics?: { host: string; port: number }; dp?: { policy: string } };
  stderr: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Starts `serve --json` in the enforcer netns; resolves once it printed where it serves. */
export async function serve(netns: string, pins: string, args: string[] = [], env: NodeJS.ProcessEnv = {}): Promise<Served> {
  const child = cliSpawn(['--netns', netns, '--bpffs', pins, 'serve', '--json', ...args], env);
  onCleanup(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => child.on('exit', (code, signal) => r({ code, signal })));
  let info: Served['info'] | undefined;
  let gone = false;
  void exited.then(() => (gone = true));
  await waitFor('serve to print where it serves', () => {
    if (gone) throw new Error(`serve exited before serving: ${err}`);
    try {
      info = JSON.parse(out) as Served['info'];
      return true;
    } catch {
      return false;
    }
  }, 60000 * TIME_SCALE);
  const client = new ServiceClient({ socket: info!.socket });
  onCleanup(() => client.close());
  return { child, socket: info!.socket, client, info: info!, stderr: () => err, exited };
}

/** One raw request on a unix socket: status and parsed body. */
export function raw(socket: string, method: string, p: string, body?: string | Buffer, headers: http.OutgoingHttpHeaders = {}): Promise<{ status: number; body: unknown; text: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: socket, method, path: p, headers: body === undefined ? headers : { 'Content-Length': Buffer.byteLength(body), ...headers }, agent: false }, (res) => {
      let text = '';
      res.on('data', (d: Buffer) => (text += d.toString()));
      res.on('end', () => {
        let v: unknown;
        try {
          v = JSON.parse(text);
        } catch {
          v = undefined;
        }
        resolve({ status: res.statusCode ?? 0, body: v, text });
      });
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** The CLI's `show --json` of a pin root, without the live counters. */
export function showJson(netns: string, pins: string): unknown {
  const r = cli(['--netns', netns, '--bpffs', pins, 'show', '--json']);
  assert.equal(r.code, 0, r.stderr);
  const v = JSON.parse(r.stdout) as { pairs: Array<Record<string, unknown>>; global?: unknown };
  delete v.global;
  for (const p of v.pairs) delete p.counters;
  return v;
}

/** GET /metrics from inside the netns the service runs in. */
export function scrape(netns: string, port: number): string {
  const r = spawnSync('ip', ['netns', 'exec', netns, 'curl', '-sf', `http://127.0.0.1:${port}/metrics`], { encoding: 'utf8' });
  assert.equal(r.status, 0, `curl /metrics: ${r.stderr}`);
  return r.stdout;
}

/** A sample's value from a text exposition: name{labels} value. */
export function sample(text: string, name: string, labels: Record<string, string>): number | undefined {
  for (const l of text.split('\n')) {
    if (!l.startsWith(name + '{') && !l.startsWith(name + ' ')) continue;
    const m = /^([^{ ]+)(?:\{(.*)\})? (\S+)$/.exec(l);
    if (!m || m[1] !== name) continue;
    const have = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) return Number(m[3]);
  }
  return undefined;
}

export function tool(cmd: string): void {
  if (spawnSync(cmd, ['--version']).error) throw new Error(`${cmd} is needed (Debian's prometheus package): make deps`);
}
