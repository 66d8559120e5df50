/**
 * Kernel suite for the runtime watcher, `neuv-bpf serve --runtime podman`
 * (src/runtime/, docs/containers.md), with real podman containers (the
 * offline image of test/podman.ts): a container running before the service
 * starts is intercepted by its resync; one started without the OCI hook is
 * intercepted after its start event (how long after, and how many of its
 * datagrams got out first, printed: the event-driven figure) and released
 * once it died; one the hook intercepted is seen as done; the record of a
 * container that went while no service ran is released by the next one's
 * resync. `--runtime docker` follows podman's Docker-compatible API
 * (podman system service) the same way.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { cli, leakChecks, makeNet, makePinRoot, onCleanup, requireKernel, uniqueName } from './helpers';
import { nsView, waitFor } from './topology';
import { sample, scrape, serve } from './service-fixture';
import { countFailOpen } from '../src/runtime';
import { Podman, burstPeer, hooksDir, noHooks, podmanForSuite } from './podman';
import { lockDirFile } from '../src/lock';
import { journalDir } from '../src/intercept/journal';
import type { RuntimeStatus } from '../src/service';

const PEER_PORT = 9998;

describe('serve --runtime podman|docker: the runtime watcher (kernel)', function () {
  this.timeout(600000);
  let pm: Podman | undefined;
  let gw = '';
  let early = '';

  before(function () {
    requireKernel(this);
    pm = podmanForSuite(this, 'runtime podman suite');
    // Running before any service: the resync's. It also brings the bridge up with the gateway address the peer binds.
    early = uniqueName('nbpc');
    pm.start(early);
    gw = `${pm.subnet4}.1`;
  });
  // Each test's cleanups run after it (leakChecks); podman's things once all ran.
  after(() => pm?.tearDown());
  leakChecks();

  it('resync intercepts a container running before serve; a container started without the hook is intercepted after its start event and released once it died; the hook\'s is done; a record of a container gone meanwhile is released by the next resync', async function () {
    const net = makeNet();
    const enf = net.ns(uniqueName('nbt')).name;
    const pins = makePinRoot();
    const c = (args: string[]) => cli(['--netns', enf, '--bpffs', pins, ...args]);
    assert.equal(c(['load']).code, 0);
    const pairs = () => (JSON.parse(c(['show', '--json']).stdout) as { pairs: Array<{ id: number; mode: string; vex: { name: string } }> }).pairs;
    const records = () => (fs.existsSync(lockDirFile(pins, 'hooks')) ? fs.readdirSync(lockDirFile(pins, 'hooks')) : []);
    const earlyId = pm!.run(['inspect', '--format', '{{.Id}}', early]).stdout.trim();
    const args = ['--runtime', 'podman', ...pm!.base.map((a) => `--runtime-arg=${a}`), '--default-mode', 'tap', '--metrics', '127.0.0.1:0'];
    let s = await serve(enf, pins, args);
    const status = () => s.client.runtime() as Promise<RuntimeStatus>;
    const acted = (id: string, action: string, cause?: string) => async () =>
      (await status()).recent.find((a) => a.id === id && a.action === action && (cause === undefined || a.cause === cause));

    // 1. The resync: the container running before serve, in the default mode.
    await waitFor('the resync to intercept the container running before serve', acted(earlyId, 'intercepted', 'resync'), 60000);
    assert.deepEqual(pairs().map((p) => p.mode), ['tap']);
    assert.deepEqual(records(), [`${earlyId}.json`]);
    assert.equal((await s.client.health()).runtime?.state, 'following');
    // The hook's fail-open count (as a hook failing open writes it, with or without a service) is a metric of the service.
    await countFailOpen(pins, 'a'.repeat(64), 'injected');
    await countFailOpen(pins, 'b'.repeat(64), 'injected');
    const m = scrape(enf, s.info.metrics!.port);
    assert.equal(sample(m, 'neuv_hook_fail_open_total', {}), 2);
    assert.equal(sample(m, 'neuv_runtime_containers_total', { action: 'intercepted' }), 1);
    assert.equal(sample(m, 'neuv_runtime_following', {}), 1);

    // 2. A 10 s job without the hook, in drop (its annotation): the watcher intercepts it after its start event.
    const p = await burstPeer(gw, PEER_PORT);
    const name = uniqueName('nbpc');
    const r = await pm!.burst(name, { hooks: noHooks(), mode: 'drop', dst: gw, port: PEER_PORT, count: 5000, intervalUs: 2000 });
    assert.equal(r.code, 0, r.stderr);
    const id = (await waitFor(`the watcher to see ${name}`, async () => (await status()).recent.find((a) => a.name === name), 30000)).id;
    const got = await waitFor('the watcher to intercept the job', acted(id, 'intercepted', 'start'), 30000);
    assert.ok(p.got.length >= 1 && p.got.length < 5000, `the first datagrams got out before the intercept, the rest not (${p.got.length} of 5000)`);
    const t0 = Number(p.got[0]!.t0) / 1e6;
    const last = Number(p.got.reduce((m, g) => (g.t > m ? g.t : m), 0n)) / 1e6;
    // eslint-disable-next-line no-console
    console.log(`      events (the watcher): a 10 s job: ${p.got.length} of 5000 reached the peer, for ${(last - t0).toFixed(0)} ms; ` +
      `intercepted ${got.delayMs} ms after its start event, +${(got.time - t0).toFixed(0)} ms after its first datagram`);
    await waitFor('the watcher to release the job once it died', acted(id, 'released'), 60000);
    assert.deepEqual(records(), [`${earlyId}.json`]);
    assert.equal(pairs().length, 1);

    // 3. A container started with the hook (through the service): intercepted before it runs; the watcher finds it done.
    const hooks = hooksDir({ enf, pins }, ['--default-mode', 'tap']);
    const name2 = uniqueName('nbpc');
    onCleanup(() => pm!.run(['rm', '-f', '-t', '0', name2], { allowFail: true }));
    pm!.run([
      '--hooks-dir', hooks, 'run', '-d', '--name', name2, '--network', pm!.network, '--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=4096:4096',
      '--annotation', 'io.neuv-bpf.mode=fwd', pm!.image, '/bin/echo-server', '8080',
    ]);
    const id2 = pm!.run(['inspect', '--format', '{{.Id}}', name2]).stdout.trim();
    await waitFor('the watcher to find the hook\'s container done', acted(id2, 'done', 'start'), 30000);
    assert.deepEqual(pairs().map((x) => x.mode).sort(), ['fwd', 'tap'], 'one pair each');
    pm!.run(['rm', '-f', '-t', '0', name2]);
    await waitFor('the hook\'s poststop to release it', () => records().length === 1 && pairs().length === 1, 30000);
    const mine = (await status()).recent.filter((x) => x.id === id2);
    assert.ok(!mine.some((x) => x.action === 'intercepted' || x.action === 'failed'), JSON.stringify(mine));
    assert.equal((await status()).stats.failed, 0);

    // 4. The service goes; the early container goes while none runs; the next service's resync releases its record.
    s.child.kill('SIGTERM');
    await s.exited;
    assert.deepEqual(pairs().map((x) => x.mode), ['tap'], 'interceptions outlive the service');
    pm!.run(['rm', '-f', '-t', '0', early]);
    s = await serve(enf, pins, args);
    // By the resync; or by its remove event, when that came within the second the event stream is read back from.
    await waitFor('the resync to release the record of the container gone', acted(earlyId, 'released'), 60000);
    assert.deepEqual(records(), []);
    assert.deepEqual(pairs(), []);
    fs.rmSync(lockDirFile(pins, 'hook-fail-open'), { force: true });
    assert.deepEqual(nsView(enf).ip('-br', 'link', 'show').split('\n').filter(Boolean).map((l) => l.split(/[ @]/)[0]).sort(), ['lo', 'vbr-neuv', 'vth-neuv']);
    assert.deepEqual(fs.existsSync(journalDir(pins)) ? fs.readdirSync(journalDir(pins)) : [], []);
    const chk = c(['show', '--check']);
    assert.equal(chk.code, 0, chk.stdout + chk.stderr);
  });

  it('--runtime docker on podman\'s Docker-compatible API (podman system service): a container running before serve is intercepted in its annotation\'s mode, one started after is intercepted on its start event, both released once removed', async function () {
    const net = makeNet();
    const enf = net.ns(uniqueName('nbt')).name;
    const pins = makePinRoot();
    const c = (args: string[]) => cli(['--netns', enf, '--bpffs', pins, ...args]);
    assert.equal(c(['load']).code, 0);
    const modes = () => (JSON.parse(c(['show', '--json']).stdout) as { pairs: Array<{ mode: string }> }).pairs.map((p) => p.mode).sort();
    const records = () => (fs.existsSync(lockDirFile(pins, 'hooks')) ? fs.readdirSync(lockDirFile(pins, 'hooks')) : []);
    const api = await pm!.apiService();
    pm!.run(['rm', '-f', '-t', '0', early], { allowFail: true }); // the suite's first container, when that test did not run
    const first = uniqueName('nbpc');
    onCleanup(() => pm!.run(['rm', '-f', '-t', '0', first], { allowFail: true }));
    pm!.start(first, ['--annotation', 'io.neuv-bpf.mode=fwd']);
    const firstId = pm!.run(['inspect', '--format', '{{.Id}}', first]).stdout.trim();
    const s = await serve(enf, pins, ['--runtime', 'docker', '--runtime-socket', api, '--default-mode', 'tap']);
    const status = () => s.client.runtime() as Promise<RuntimeStatus>;
    const acted = (id: string, action: string, cause?: string) => async () =>
      (await status()).recent.find((a) => a.id === id && a.action === action && (cause === undefined || a.cause === cause));

    // By the resync; or by its start event, when that came within the seconds the event stream is read back from.
    await waitFor('the resync to intercept the running container', acted(firstId, 'intercepted'), 60000);
    assert.deepEqual(modes(), ['fwd'], 'its annotation read from the API (libpod\'s inspect: the compatible one has none)');
    const st = await status();
    assert.equal(st.name, 'docker');
    assert.equal(st.socket, api);
    assert.equal(st.state, 'following');

    const second = uniqueName('nbpc');
    onCleanup(() => pm!.run(['rm', '-f', '-t', '0', second], { allowFail: true }));
    pm!.start(second);
    const secondId = pm!.run(['inspect', '--format', '{{.Id}}', second]).stdout.trim();
    const got = await waitFor('the watcher to intercept the container on its start event', acted(secondId, 'intercepted', 'start'), 30000);
    assert.ok(got.delayMs !== undefined && got.delayMs >= 0, JSON.stringify(got));
    // eslint-disable-next-line no-console
    console.log(`      events (the Docker API of podman's service): intercepted ${Math.round(got.delayMs!)} ms after its start event`);
    assert.deepEqual(modes(), ['fwd', 'tap']);
    assert.equal(records().length, 2);

    pm!.run(['rm', '-f', '-t', '0', first, second]);
    await waitFor('both released once removed', async () => (await acted(firstId, 'released')()) && (await acted(secondId, 'released')()), 60000);
    assert.deepEqual(modes(), []);
    assert.deepEqual(records(), []);
    assert.equal((await status()).stats.failed, 0);
    s.child.kill('SIGTERM');
    await s.exited;
    const chk = c(['show', '--check']);
    assert.equal(chk.code, 0, chk.stdout + chk.stderr);
  });
});
