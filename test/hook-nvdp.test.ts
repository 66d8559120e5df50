/**
 * Kernel suite: NeuVector's real DP knows a container before its first
 * packet (`serve --dp PIDFILE --dp-register POLICY`, src/service/endpoints.ts).
 * The OCI hook intercepts a podman container through the service, which
 * registers it with the DP (its endpoint inline, the node's policy) before
 * the hook returns, so before the container's process runs. udp-burst sends
 * from its first instruction: to a port the policy denies, none reaches the
 * peer and the DP counted them; to a port it allows, all of them reach it,
 * the first included (a DP not told of the endpoint drops its frames).
 * The DP restarted: the service registers a running container again (its
 * traffic through the new DP, the policy held). No service: the hook,
 * given the DP itself, registers the container the same way.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { cli, leakChecks, makeNet, makePinRoot, onCleanup, uniqueName, TIME_SCALE } from './helpers';
import { waitFor } from './topology';
import { sample, scrape, serve } from './service-fixture';
import { Podman, burstPeer, hooksDir, podmanForSuite } from './podman';
import { requireNvdp } from './nvdp-fixture';
import { NvDp } from '../harness/nvdp';

const DENIED = 9997;
const ALLOWED = 9996;

describe('serve --dp-register: the real DP knows a container before its first packet (kernel)', function () {
  this.timeout(300000);
  let pm: Podman | undefined;
  let gw = '';

  before(function () {
    requireNvdp(this);
    pm = podmanForSuite(this, 'hook-nvdp suite');
    pm.start(uniqueName('nbpc')); // brings the bridge up with the gateway address the peers bind
    gw = `${pm.subnet4}.1`;
  });
  // Each test's cleanups run after it (leakChecks); podman's things once all ran.
  after(() => pm?.tearDown());
  leakChecks();

  it('the hook through the service: a container whose first action sends UDP to a port the DP denies gets none through, the DP counted them; to an allowed port all of them, the first included; a DP restarted gets a running container\'s endpoint and policy again; the standalone hook given the DP registers the container itself', async function () {
    const net = makeNet();
    const enf = net.ns(uniqueName('nbt')).name;
    const pins = makePinRoot();
    assert.equal(cli(['--netns', enf, '--bpffs', pins, 'load']).code, 0);
    const dp = await NvDp.start({ netns: enf });
    onCleanup(() => dp.kill());
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nbt-dpreg-'));
    onCleanup(() => fs.rmSync(dir, { recursive: true, force: true }));
    const pidfile = path.join(dir, 'dp.pid');
    fs.writeFileSync(pidfile, `${dp.pid}\n`);
    const policy = path.join(dir, 'policy.json');
    fs.writeFileSync(policy, JSON.stringify({ defaultAction: 'allow', rules: [{ id: 1, dip: gw, port: DENIED, proto: 17, action: 'deny', ingress: false }] }));
    const s = await serve(enf, pins, ['--dp', pidfile, '--dp-register', policy, '--metrics', '127.0.0.1:0']);
    await waitFor('the service sees the DP up', async () => (await s.client.dp()).state === 'up', 20000 * TIME_SCALE, 50);
    const hooks = hooksDir({ enf, pins }, ['--default-mode', 'bypass']);
    const denied = await burstPeer(gw, DENIED);
    const allowed = await burstPeer(gw, ALLOWED);

    const udp0 = (await dp.client.counterDevice()).udpPackets;
    const r = await pm!.burst(uniqueName('nbpc'), { hooks, mode: 'fwd', dst: gw, port: DENIED, count: 50, intervalUs: 1000 });
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(denied.got, [], 'no datagram to the denied port reached the peer');
    const udp1 = (await dp.client.counterDevice()).udpPackets;
    assert.ok(udp1 - udp0 >= 50n, `the DP saw the 50 datagrams (UDP packets counted: +${udp1 - udp0})`);

    const r2 = await pm!.burst(uniqueName('nbpc'), { hooks, mode: 'fwd', dst: gw, port: ALLOWED, count: 50, intervalUs: 1000 });
    assert.equal(r2.code, 0, r2.stderr);
    assert.deepEqual(allowed.got.map((g) => g.seq).sort((a, b) => a - b), Array.from({ length: 50 }, (_, i) => i + 1), 'all 50 through the DP, the first included');
    const udp2 = (await dp.client.counterDevice()).udpPackets;
    assert.ok(udp2 - udp1 >= 50n, `the DP forwarded them (+${udp2 - udp1})`);
    // eslint-disable-next-line no-console
    console.log(`      the DP counted ${udp1 - udp0} UDP packets of the denied job (none through), ${udp2 - udp1} of the allowed one (50 of 50 through)`);
    // Released at poststop: the endpoints gone from the DP with their sessions, no pair left.
    assert.deepEqual((await s.client.pairs()).pairs, []);
    await waitFor('the DP to forget the endpoints', async () => (await dp.client.listSessions()).length === 0, 10000);

    // The DP restarts (a new pid, knowing no endpoint): the service registers a running container's endpoint and policy again.
    const name = uniqueName('nbpc');
    onCleanup(() => pm!.run(['rm', '-f', '-t', '0', name], { allowFail: true }));
    pm!.run(['--hooks-dir', hooks, 'run', '-d', '--name', name, '--network', pm!.network, '--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=4096:4096',
      '--annotation', 'io.neuv-bpf.mode=fwd', pm!.image, '/bin/echo-server', '8080']);
    assert.equal(sample(scrape(enf, s.info.metrics!.port), 'neuv_dp_endpoints_registered', {}), 1);
    dp.kill();
    const dp2 = await NvDp.start({ netns: enf });
    onCleanup(() => dp2.kill());
    fs.writeFileSync(pidfile, `${dp2.pid}\n`);
    await waitFor('the service to take the new DP up', async () => (await s.client.dp()).pid === dp2.pid, 20000 * TIME_SCALE, 50);
    assert.equal(sample(scrape(enf, s.info.metrics!.port), 'neuv_dp_endpoints_reregistered_total', {}), 1);
    const exec = (port: number) => pm!.run(['exec', name, '/bin/udp-burst', gw, String(port), '20', '1000']);
    const d0 = (await dp2.client.counterDevice()).udpPackets;
    exec(DENIED);
    exec(ALLOWED);
    await waitFor('the 20 allowed datagrams through the new DP', () => allowed.got.length >= 70, 10000);
    assert.equal(denied.got.length, 0, 'the policy came back with the endpoint: none to the denied port');
    const d1 = (await dp2.client.counterDevice()).udpPackets;
    assert.ok(d1 - d0 >= 40n, `the new DP saw both bursts (+${d1 - d0})`);
    pm!.run(['rm', '-f', '-t', '0', name]);
    assert.equal(sample(scrape(enf, s.info.metrics!.port), 'neuv_dp_endpoints_registered', {}), 0);
    s.child.kill('SIGTERM');
    await s.exited;

    // No service: the hook standalone, given the DP (--dp, --dp-register), registers the container itself, the same way.
    const alone = hooksDir({ enf, pins }, ['--default-mode', 'bypass', '--dp', pidfile, '--dp-register', policy]);
    const u0 = (await dp2.client.counterDevice()).udpPackets;
    const r3 = await pm!.burst(uniqueName('nbpc'), { hooks: alone, mode: 'fwd', dst: gw, port: DENIED, count: 20, intervalUs: 1000 });
    assert.equal(r3.code, 0, r3.stderr);
    const r4 = await pm!.burst(uniqueName('nbpc'), { hooks: alone, mode: 'fwd', dst: gw, port: ALLOWED, count: 20, intervalUs: 1000 });
    assert.equal(r4.code, 0, r4.stderr);
    assert.equal(denied.got.length, 0, 'standalone: none to the denied port');
    assert.equal(allowed.got.length, 90, 'standalone: all 20 to the allowed port, the first included');
    const u1 = (await dp2.client.counterDevice()).udpPackets;
    assert.ok(u1 - u0 >= 40n, `the DP saw both standalone bursts (+${u1 - u0})`);
    assert.deepEqual(JSON.parse(cli(['--netns', enf, '--bpffs', pins, 'show', '--json']).stdout).pairs, []);
    await waitFor('the DP to forget the standalone endpoints', async () => (await dp2.client.listSessions()).length === 0, 10000);
  });
});
