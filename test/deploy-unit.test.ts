/**
 * deploy/ holds facts that must agree with each other and with the image
 * (docs/deploy.md): the DaemonSet's image is the one `make image` tags, its
 * pin root is the one its probe's socket and CRI-O's hook name, it mounts what
 * the service needs from the node, and CRI-O's hook file is podman's with the
 * paths the DaemonSet installs and the pod sandbox only. (The image itself,
 * the probe and the init container's script run in test/image.test.ts.)
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ROOT } from './helpers';
import { daemonSet, DAEMONSET, hookFile, readYaml } from './manifests';
import { defaultSocketPath } from '../src/service/client';

const version = (JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;

describe('deploy/: the DaemonSet and the hooks.d files (unit)', function () {
  it('the DaemonSet runs the image make image tags as an enforcer runs: privileged, host pid and network, the node\'s bpffs and /run/neuv-bpf', function () {
    assert.deepEqual(readYaml(DAEMONSET).map((o) => o.kind), ['Namespace', 'DaemonSet']);
    const make = fs.readFileSync(path.join(ROOT, 'Makefile'), 'utf8');
    assert.match(make, /^IMAGE_TAG \?= localhost\/neuv-bpf:\$\(shell node -p 'require\("\.\/package\.json"\)\.version'\)$/m, 'the Makefile\'s tag');
    const { pod } = daemonSet();
    assert.equal(pod.hostNetwork, true);
    assert.equal(pod.hostPID, true);
    assert.ok((pod.terminationGracePeriodSeconds ?? 30) >= 40, 'serve may take 30 s to finish its calls on SIGTERM');
    const serve = pod.containers.find((c) => c.name === 'serve')!;
    for (const c of [serve, ...(pod.initContainers ?? [])]) assert.equal(c.image, `localhost/neuv-bpf:${version}`, c.name);
    assert.equal(serve.securityContext?.privileged, true);
    assert.equal(serve.command, undefined, 'the image\'s entrypoint (neuv-bpf serve)');
    const host = (mountPath: string) => {
      const m = serve.volumeMounts?.find((v) => v.mountPath === mountPath);
      return pod.volumes.find((v) => v.name === m?.name)?.hostPath?.path;
    };
    assert.equal(host('/sys/fs/bpf'), '/sys/fs/bpf');
    assert.equal(host('/run/neuv-bpf'), '/run/neuv-bpf');
    assert.equal(host('/run/netns'), '/run/netns');
    const pins = serve.env?.find((e) => e.name === 'NEUV_BPF_PIN_ROOT')?.value;
    assert.equal(pins, '/sys/fs/bpf/neuv');
    assert.ok(serve.livenessProbe!.exec.command.join(' ').includes(`'${defaultSocketPath(pins)}'`), 'the probe asks the socket of that pin root');
    const crio = hookFile('crio-hook.json').hook.args;
    assert.equal(crio[crio.indexOf('--bpffs') + 1], pins, 'CRI-O\'s hook acts on the same pin root');
  });

  it('CRI-O\'s hook file is podman\'s with the node paths the init container installs, for pod sandboxes only', function () {
    const podman = hookFile('neuv-bpf-hook.json');
    const crio = hookFile('crio-hook.json');
    assert.equal(crio.version, podman.version);
    assert.deepEqual(crio.stages, podman.stages);
    assert.deepEqual(crio.hook.env, podman.hook.env);
    assert.equal(crio.hook.timeout, podman.hook.timeout);
    assert.deepEqual(crio.hook.args.slice(2), podman.hook.args.slice(2), 'the same command and options');
    assert.deepEqual([crio.hook.path, crio.hook.args[1]], ['/opt/neuv-bpf/node/bin/node', '/opt/neuv-bpf/bin/neuv-bpf']);
    assert.deepEqual(crio.when, { annotations: { '^io\\.kubernetes\\.cri-o\\.ContainerType$': '^sandbox$' } });
    const init = daemonSet().pod.initContainers!.find((c) => c.name === 'install-hook')!;
    const script = init.args!.join('\n');
    const mounts = Object.fromEntries(init.volumeMounts!.map((m) => [m.mountPath, daemonSet().pod.volumes.find((v) => v.name === m.name)?.hostPath?.path]));
    assert.deepEqual(mounts, { '/host/opt': '/opt', '/host/hooks.d': '/etc/containers/oci/hooks.d' });
    assert.match(script, /cp \/usr\/bin\/node \/host\/opt\/neuv-bpf\.new\/node\/bin\/node$/m);
    assert.match(script, /mv \/host\/opt\/neuv-bpf\.new \/host\/opt\/neuv-bpf$/m);
    assert.match(script, /cp \/opt\/neuv-bpf\/deploy\/crio-hook\.json /m);
  });
});
