// Certificates made with openssl at bench time under bench/work/ (git-ignored): a CA, the bookinfo
// productpage X.509-SVID (the client whose Check is measured) and a server certificate for the
// Envoy listener that plays the egress gateway. No key is ever committed.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runCommand } from './processes.mjs';

export const BOOKINFO_ID = 'spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage';
export const GATEWAY_ID = 'spiffe://cluster.local/ns/istio-system/sa/egress-gateway';

// `openssl req` arguments for a new unencrypted P-256 key, written to the file that follows.
const NEW_EC_KEY = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout'];

async function openssl(args, cwd) {
  const r = await runCommand('openssl', args, { cwd, timeoutMs: 30_000 });
  if (r.code !== 0) throw new Error(`openssl ${args.join(' ')} failed: ${r.stderr.trim()}`);
}

async function issue(dir, name, subject, extensions) {
  writeFileSync(join(dir, `${name}.ext`), extensions.join('\n') + '\n');
  await openssl(['req', ...NEW_EC_KEY, `${name}.key`, '-out', `${name}.csr`, '-subj', subject], dir);
  await openssl(
    [
      'x509',
      '-req',
      '-in',
      `${name}.csr`,
      '-CA',
      'ca.pem',
      '-CAkey',
      'ca.key',
      '-CAcreateserial',
      '-days',
      '2',
      '-sha256',
      '-extfile',
      `${name}.ext`,
      '-out',
      `${name}.pem`,
    ],
    dir,
  );
}

/** extraClients: { name: spiffeId } more client SVIDs, returned under `clients` by name. */
export async function makePki(dir, { extraClients = {} } = {}) {
  mkdirSync(dir, { recursive: true });
  await openssl(
    [
      'req',
      '-x509',
      ...NEW_EC_KEY,
      'ca.key',
      '-out',
      'ca.pem',
      '-days',
      '2',
      '-subj',
      '/O=cluster.local/CN=bench mesh CA',
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
    ],
    dir,
  );
  const leaf = (uri, dns) => [
    'basicConstraints=critical,CA:FALSE',
    'keyUsage=critical,digitalSignature,keyEncipherment',
    'extendedKeyUsage=serverAuth,clientAuth',
    `subjectAltName=critical,URI:${uri}${dns ? `,DNS:${dns}` : ''}`,
  ];
  await issue(dir, 'bookinfo', '/O=cluster.local', leaf(BOOKINFO_ID));
  await issue(dir, 'gateway', '/O=cluster.local', leaf(GATEWAY_ID));
  const clients = {};
  for (const [name, uri] of Object.entries(extraClients)) {
    await issue(dir, name, '/O=cluster.local', leaf(uri));
    clients[name] = { certFile: join(dir, `${name}.pem`), keyFile: join(dir, `${name}.key`) };
  }
  return {
    clients,
    caFile: join(dir, 'ca.pem'),
    client: { certFile: join(dir, 'bookinfo.pem'), keyFile: join(dir, 'bookinfo.key') },
    server: { certFile: join(dir, 'gateway.pem'), keyFile: join(dir, 'gateway.key') },
    clientCertPem: readFileSync(join(dir, 'bookinfo.pem'), 'utf8'),
  };
}
