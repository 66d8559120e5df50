/**
 * Containers and their runtimes (docs/containers.md): what the OCI hook
 * (src/hook/) and the service's runtime watcher share, and the watcher.
 *
 *   container.ts  the annotations (mode, port), the per-container record, intercept and release of a container
 *   podman.ts     what the watcher asks of a runtime; podman's CLI: events followed, ps, inspect (argument arrays, output checked)
 *   docker.ts     the Docker Engine API on a unix socket (dockerd's, podman's service): events, containers, inspect
 *   watcher.ts    RuntimeWatcher: intercept on start, release after died, resync at start-up
 */
export {
  CONTAINER_ID_RE, CONTAINER_MODES, countFailOpen, readFailOpenCount, MODE_ANNOTATION, PORT_ANNOTATION, containerRecordIds, interceptContainer, modeOfAnnotations,
  portOfAnnotations, readContainerRecord, releaseContainer, removeContainerRecord, writeContainerRecord,
} from './container';
export type { FailOpenCount, ContainerMode, ContainerOutcome, ContainerRecord, ContainerStart } from './container';
export { PodmanCli, parseEvent, parseInspect } from './podman';
export type { RuntimeClient, RuntimeContainer, RuntimeEvent } from './podman';
export { DOCKER_SOCKET, DockerApi, parseApiEvent } from './docker';
export { RUNTIMES, RuntimeWatcher } from './watcher';
export type { RuntimeAction, RuntimeActionName, RuntimeName, RuntimeWatchOptions } from './watcher';
