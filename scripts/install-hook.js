#!/usr/bin/env node
'use strict';
/**
 * Installs the OCI hook (`neuv-bpf oci-hook`) for podman and CRI-O: writes
 * deploy/neuv-bpf-hook.json into a hooks.d directory with this checkout's
 * bin/neuv-bpf and the options given (make install-hook; docs/deploy.md).
 *
 *   node scripts/install-hook.js [--hooks-dir DIR] [--netns NAME|PATH] [--bpffs DIR]
 *        [--default-mode fwd|tap|bypass|drop|none] [--on-failure closed|open] [--socket PATH]
 *        [--dp local|PIDFILE --dp-register POLICY|none]
 *
 * --hooks-dir defaults to /etc/containers/oci/hooks.d (podman's and CRI-O's);
 * the file is written 0644 under a temporary name, then renamed. Prints its path.
 * The test suite (test/oci-hook.test.ts) installs the hook with this script.
 */
const fs = require('node:fs');
const path = require('node:path');

const ROOT = path.resolve(__dirname, '..');
const FILE = 'neuv-bpf-hook.json';
const args = process.argv.slice(2);
const opts = { 'hooks-dir': '/etc/containers/oci/hooks.d' };
const known = ['hooks-dir', 'netns', 'bpffs', 'default-mode', 'on-failure', 'socket', 'dp', 'dp-register'];
for (let i = 0; i < args.length; i += 2) {
  const k = /^--(.+)$/.exec(args[i] ?? '')?.[1];
  if (!k || !known.includes(k) || args[i + 1] === undefined) {
    process.stderr.write(`install-hook: usage: install-hook.js ${known.map((o) => `[--${o} VALUE]`).join(' ')}\n`);
    process.exit(2);
  }
  opts[k] = args[i + 1];
}

const hook = JSON.parse(fs.readFileSync(path.join(ROOT, 'deploy', FILE), 'utf8'));
const a = hook.hook.args;
const cmd = a.indexOf('oci-hook');
// args: node, the CLI, its global options, oci-hook, its options.
const globals = [];
if (opts.netns) globals.push('--netns', opts.netns);
globals.push('--bpffs', opts.bpffs ?? a[a.indexOf('--bpffs') + 1]);
const own = a.slice(cmd + 1);
const set = (name, v) => {
  if (v === undefined) return;
  const i = own.indexOf(name);
  if (i >= 0) own[i + 1] = v;
  else own.push(name, v);
};
set('--default-mode', opts['default-mode']);
set('--on-failure', opts['on-failure']);
set('--socket', opts.socket);
set('--dp', opts.dp);
set('--dp-register', opts['dp-register']);
hook.hook.path = process.execPath;
hook.hook.args = ['node', path.join(ROOT, 'bin', 'neuv-bpf'), ...globals, 'oci-hook', ...own];

const dir = opts['hooks-dir'];
fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
const out = path.join(dir, FILE);
const tmp = `${out}.${process.pid}.tmp`;
fs.writeFileSync(tmp, JSON.stringify(hook, null, 2) + '\n', { mode: 0o644, flag: 'wx' });
fs.renameSync(tmp, out);
process.stdout.write(`${out}\n`);
