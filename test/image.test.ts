/**
 * Kernel suite for the service's OCI image (make image, docs/deploy.md): the
 * archive loaded into a private podman storage (test/podman.ts) and run the
 * way NeuVector's enforcer runs, privileged, in the host's pid namespace,
 * with /sys/fs/bpf and /run/neuv-bpf mounted; in an enforcer netns the test
 * makes (`--network ns:PATH` where a node runs `--net host`: the host's
 * interfaces are never touched). Driven from outside over its unix socket:
 * health, a container intercepted (the image's ip, nsenter and ethtool at
 * work), mode switches with traffic, metrics; `podman stop` ends it cleanly
 * and the datapath stays loaded.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { leakChecks, onCleanup, requireKernel, ROOT, TIME_SCALE, uniqueName } from './helpers';
import { containerState, makeTopology, waitFor, workloadPid } from './topology';
import { ping } from '../harness/topology';
import { Podman, podmanForSuite } from './podman';
import { sample, scrape } from './service-fixture';
import { daemonSet, hookFile } from './manifests';
import { ServiceClient, defaultSocketPath } from '../src/service/client';
import { isLoaded } from '../src/pins';

const ARCHIVE = path.join(ROOT, 'build', 'image', 'neuv-bpf.oci.tar');
const METRICS_PORT = 9469;
const serveSpec = () => daemonSet().pod.containers.find((c) => c.name === 'serve')!;

describe('the service image under podman, as an enforcer runs it (kernel)', function () {
  this.timeout(600000 * TIME_SCALE);
  let pm: Podman | undefined;
  let image = '';

  before(function () {
    requireKernel(this);
    const p = (pm = podmanForSuite(this, 'image suite', { setUp: false }));
    // Not a skip: make test builds the image (make image); without it this suite fails.
    if (!fs.existsSync(ARCHIVE)) throw new Error(`${ARCHIVE} missing: make image`);
    image = p.load(ARCHIVE);
  });
  // Each test's cleanups run after it (leakChecks); podman's things once all ran.
  after(() => pm?.tearDown());
  leakChecks();

  it('serves its socket: health, a container intercepted, modes with traffic, metrics; podman stop exits 0 and the datapath stays', async function () {
    const p = pm!;
    const tt = makeTopology({ containers: 1, load: false });
    const c1 = tt.c[0]!;
    if (!fs.existsSync('/run/neuv-bpf')) fs.mkdirSync('/run/neuv-bpf', { mode: 0o700 });
    const name = uniqueName('nbi');
    onCleanup(() => p.run(['rm', '-f', '-t', '0', name], { allowFail: true }), `container ${name}`);
    p.run([
      'run', '-d', '--name', name, '--privileged', '--pid', 'host', '--network', `ns:/run/netns/${tt.t.enforcer}`,
      '-v', '/sys/fs/bpf:/sys/fs/bpf', '-v', '/run/neuv-bpf:/run/neuv-bpf', '-e', `NEUV_BPF_PIN_ROOT=${tt.pins}`,
      '--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=4096:4096',
      image, '--metrics', `127.0.0.1:${METRICS_PORT}`,
    ]);
    const state = () => (JSON.parse(p.run(['inspect', name]).stdout) as Array<{ State: { Status: string; Pid: number; ExitCode: number } }>)[0]!.State;
    const logs = () => p.run(['logs', name], { allowFail: true }).stderr;

    const socket = defaultSocketPath(tt.pins);
    const client = new ServiceClient({ socket });
    onCleanup(() => client.close());
    const health = await waitFor('the service in the container to answer', async () => {
      if (state().Status !== 'running') throw new Error(`the container stopped: ${logs()}`);
      return fs.existsSync(socket) ? await client.health().catch(() => undefined) : undefined;
    }, 120000 * TIME_SCALE, 200);
    assert.equal(health.status, 'ok');
    assert.equal(health.pinRoot, tt.pins);
    assert.equal(health.pid, state().Pid, 'its pid is the host pid namespace one (--pid host)');
    const st = fs.lstatSync(socket);
    assert.ok(st.isSocket() && (st.mode & 0o777) === 0o600 && st.uid === 0, 'a 0600 root socket on the host');
    assert.ok(isLoaded(tt.pins), 'the datapath pinned on the host bpffs');
    // The DaemonSet's liveness probe as the kubelet runs it, on this pin root's socket.
    const probe = serveSpec().livenessProbe!.exec.command.map((a) => a.replace(defaultSocketPath('/sys/fs/bpf/neuv'), socket));
    assert.equal(p.run(['exec', name, ...probe], { allowFail: true }).code, 0, 'the liveness probe passes');

    // A workload's container, intercepted by its host pid (nsenter, ip and ethtool of the image).
    const before = containerState(tt.t, c1);
    const pid = workloadPid(tt.t, c1);
    const r = await client.intercept({ pid }, { mode: 'tap' });
    assert.equal(r.pair.mode, 'tap');
    assert.deepEqual(containerState(tt.t, c1), before, 'the container sees the same eth0');
    assert.deepEqual((await client.pairs()).pairs.map((x) => x.id), [r.pair.id]);
    const shown = JSON.parse(tt.run(['show', '--json']).stdout) as { pairs: Array<{ id: number; mode: string }> };
    assert.deepEqual(shown.pairs.map((x) => [x.id, x.mode]), [[r.pair.id, 'tap']], 'the CLI on the host sees the pair');
    assert.equal(ping(tt.t, tt.t.host, c1.ip4, 3), 3, 'tap forwards');

    const sw = await client.setMode(r.pair.id, 'drop');
    assert.deepEqual([sw.from, sw.to], ['tap', 'drop']);
    assert.equal(ping(tt.t, tt.t.host, c1.ip4, 3), 0, 'drop drops');
    await client.setMode(r.pair.id, 'bypass');
    assert.equal(ping(tt.t, tt.t.host, c1.ip4, 3), 3, 'bypass forwards');

    const m = scrape(tt.t.enforcer, METRICS_PORT);
    assert.equal(sample(m, 'neuv_datapath_loaded', {}), 1);
    assert.equal(sample(m, 'neuv_pairs', { mode: 'bypass' }), 1);
    const drops = sample(m, 'neuv_pair_frames_total', { id: String(r.pair.id), direction: 'to_wl', action: 'drop' });
    assert.ok(drops !== undefined && drops >= 3, `the pings dropped are counted (${drops})`);

    assert.equal((await client.release({ pid })).pairId, r.pair.id);
    assert.equal((await client.pairs()).pairs.length, 0, 'released');
    assert.deepEqual(containerState(tt.t, c1), before, 'the container as it was');

    const rss = sample(scrape(tt.t.enforcer, METRICS_PORT), 'neuv_process_resident_memory_bytes', {});
    // eslint-disable-next-line no-console
    console.log(`      the service's resident memory: ${Math.round((rss ?? 0) / 2 ** 20)} MiB`);

    // podman stop: SIGTERM, the service exits 0, its socket goes, the datapath stays loaded.
    p.run(['stop', '-t', '40', name]);
    assert.equal(state().ExitCode, 0, logs());
    assert.ok(!fs.existsSync(socket), 'socket removed on exit');
    assert.ok(isLoaded(tt.pins), 'the datapath stays loaded');
    const u = tt.run(['unload']);
    assert.equal(u.code, 0, `${u.stderr}\n${logs().slice(-6000)}`);
    assert.equal(p.run(['exec', name, ...probe], { allowFail: true }).code === 0, false, 'the probe fails once it is gone');
  });

  it('the DaemonSet\'s install-hook init container puts a CLI that runs on the node and CRI-O\'s hook file in place, twice over', function () {
    const p = pm!;
    const init = daemonSet().pod.initContainers!.find((c) => c.name === 'install-hook')!;
    const dir = fs.mkdtempSync(`/tmp/${uniqueName('nbi')}-`);
    onCleanup(() => fs.rmSync(dir, { recursive: true, force: true }), `directory ${dir}`);
    for (const d of ['opt', 'hooks']) fs.mkdirSync(path.join(dir, d));
    for (let i = 0; i < 2; i++) {
      p.run([
        'run', '--rm', '--network', 'none', '-v', `${dir}/opt:/host/opt`, '-v', `${dir}/hooks:/host/hooks.d`,
        '--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=4096:4096', '--entrypoint', JSON.stringify(init.command), image, ...init.args!,
      ]);
      assert.deepEqual(fs.readdirSync(path.join(dir, 'opt')), ['neuv-bpf'], 'no .new or .old left');
      assert.deepEqual(fs.readdirSync(path.join(dir, 'hooks')), ['neuv-bpf-hook.json']);
      assert.deepEqual(JSON.parse(fs.readFileSync(path.join(dir, 'hooks', 'neuv-bpf-hook.json'), 'utf8')), hookFile('crio-hook.json'));
      // The hook file's node and CLI, under the test's directory instead of the node's /opt: they run here, outside the image.
      const [node, cli] = [hookFile('crio-hook.json').hook.path, hookFile('crio-hook.json').hook.args[1]!].map((f) => path.join(dir, f));
      const v = spawnSync(node!, [cli!, 'version', '--json'], { encoding: 'utf8' });
      assert.equal(v.status, 0, v.stderr);
      const got = JSON.parse(v.stdout) as { version: string; node: string; features: { libbpf: string } };
      assert.equal(got.version, (JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string }).version);
      assert.match(got.node, /^v20\./, 'the image\'s node (Node 20)');
      assert.match(got.features.libbpf, /^v1\./, 'libbpf loaded through koffi');
    }
  });
});
