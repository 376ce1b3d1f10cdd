// A Dubbo2 provider over Hessian2 (npm sofa-rpc-node + dubbo-remoting), for ringside's tests.
// Usage: node provider.js --port P --name NAME [--version V] [--group G]
//        [--registry 127.0.0.1:ZKPORT/dubbo] [--tag T]
// Prints "READY <port>" once listening (and, with --registry, once published in ZooKeeper
// as dubbo://127.0.0.1:P?interface=..., unpublished on SIGTERM; with --tag, the URL carries
// `dubbo.tag=T`, as an Apache Dubbo provider's with `dubbo.provider.tag=T`). Serves com.ringside.test.EchoService:
//   echo(String) -> String, add(int, int) -> int, map(Map) -> Map, list(List) -> List,
//   large(String) -> length of the string, empty() -> "empty", whoami() -> NAME,
//   sleep(int ms) -> "slept" after ms.
'use strict';
const { RpcServer } = require('sofa-rpc-node').server;
const protocol = require('dubbo-remoting');

function arg(name, dflt) {
  const i = process.argv.indexOf('--' + name);
  return i > 0 ? process.argv[i + 1] : dflt;
}

const port = Number(arg('port', '20880'));
const name = arg('name', 'provider');
const version = arg('version', '1.0.0');
const group = arg('group', undefined);
const logger = { info() {}, warn() {}, debug() {}, error: console.error };

const registryAddress = arg('registry', undefined);
let registry;
if (registryAddress) {
  const { ZookeeperRegistry } = require('sofa-rpc-node').registry;
  registry = new ZookeeperRegistry({ logger, address: registryAddress });
}
const server = new RpcServer({ logger, protocol, port, registry, publishAddress: '127.0.0.1' });
const service = {
  async echo(s) { return s; },
  async add(a, b) { return a + b; },
  async map(m) { return m; },
  async list(l) { return l; },
  async large(s) { return s.length; },
  async empty() { return 'empty'; },
  async whoami() { return name; },
  async sleep(ms) { await new Promise(r => setTimeout(r, ms)); return 'slept'; },
};
const meta = { interfaceName: 'com.ringside.test.EchoService', version };
if (group) meta.group = group;
const tag = arg('tag', undefined);
if (tag) meta.customMeta = { 'dubbo.tag': tag };
server.addService(meta, service);
server.start().then(() => registry && server.publish()).then(() => {
  console.log('READY ' + port);
}).catch(err => { console.error(err); process.exit(1); });
process.on('SIGTERM', () => server.close().then(() => process.exit(0)));
