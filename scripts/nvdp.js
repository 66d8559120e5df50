#!/usr/bin/env node
'use strict';
/**
 * `make nvdp`: builds NeuVector's DP from its source tarball
 * (third_party/neuvector-dp/, or $NEUV_BPF_NVDP_TARBALL) into build/nvdp/dp,
 * unless it was built from the same tarball already (harness/nvdp.ts's
 * buildNvdp, as the suites and the demo do on first use), then says how to
 * start it (docs/neuvector-dp.md). Needs `make build` (dist/harness,
 * build/nvdp-run) and the DP's build packages (scripts/deps.sh).
 */
const path = require('node:path');
const { buildNvdp, NVDP_RUN } = require('../dist/harness/nvdp');

const rel = (p) => path.relative(process.cwd(), p) || '.';
try {
  const bin = buildNvdp({ log: (s) => console.log(`nvdp: ${s}`) });
  console.log(
    [
      `nvdp: ${rel(bin)} is NeuVector's DP. Start it as root inside an enforcer netns NAME where the`,
      `datapath is loaded (neuv-bpf --netns NAME load), with a private /tmp for its fixed socket paths:`,
      `  ${rel(NVDP_RUN)} --netns /run/netns/NAME -- ${bin} -s 1 -n 1    (the program by its absolute path)`,
      `Its control socket is then /proc/<pid>/root/tmp/dp_listen.sock (DpClient); it reads vth-neuv once`,
      `told to (ctrl_add_srvc_port). NvDp.start in dist/harness/nvdp.js does all of it: docs/neuvector-dp.md.`,
    ].join('\n'),
  );
} catch (e) {
  console.error(`nvdp: ${e.message}`);
  process.exit(1);
}
