// In-process cost of chain verification on the sideband path: one sideband Check (identity → chain
// verification → input → policy → decision → log line) without HTTP, for a leaf + intermediate chain
// of cluster.local, (a) without trust bundles, (b) verified on every call (cache off), (c) verified
// with the verification cache (the hot path: the same workload certificate again and again).
// `npm run bench:chain [-- ROUNDS]` (rounds of 1 s; best round reported). Certificates are made in
// memory at start; nothing is written.
import 'reflect-metadata';
import { webcrypto } from 'node:crypto';
import * as x509 from '@peculiar/x509';
import pino from 'pino';
import { Authorizer } from '../dist/decision/authorizer.js';
import { ChainVerifier } from '../dist/identity/chain-verify.js';
import { parseX509Bundle, X509BundleSet } from '../dist/identity/x509-bundle.js';
import { loadPolicy } from '../dist/lifecycle/bundle-source.js';
import { defaultPolicyLocation } from '../dist/cli.js';
import { bestOfRounds } from './rounds.mjs';

x509.cryptoProvider.set(webcrypto);
const rounds = Number(process.argv[2] ?? 5);
const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
const DAY = 86_400_000;

async function certificate({ subject, issuer, issuerKeys, ca, uri }) {
  const keys = await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify']);
  const usage = ca ? x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign : x509.KeyUsageFlags.digitalSignature;
  const extensions = [
    new x509.BasicConstraintsExtension(ca, undefined, true),
    new x509.KeyUsagesExtension(usage, true),
  ];
  if (uri) extensions.push(new x509.SubjectAlternativeNameExtension([{ type: 'url', value: uri }], true));
  const common = {
    serialNumber: '0' + Math.floor(Math.random() * 1e9).toString(16),
    notBefore: new Date(Date.now() - DAY),
    notAfter: new Date(Date.now() + DAY),
    signingAlgorithm: alg,
    extensions,
  };
  const cert = issuer
    ? await x509.X509CertificateGenerator.create({
        ...common,
        subject,
        issuer,
        publicKey: keys.publicKey,
        signingKey: issuerKeys.privateKey,
      })
    : await x509.X509CertificateGenerator.createSelfSigned({ ...common, name: subject, keys });
  return { pem: cert.toString('pem'), name: cert.subject, keys };
}

const root = await certificate({ subject: 'CN=bench root', ca: true });
const inter = await certificate({
  subject: 'CN=bench intermediate',
  issuer: root.name,
  issuerKeys: root.keys,
  ca: true,
});
const leaf = await certificate({
  subject: '',
  issuer: inter.name,
  issuerKeys: inter.keys,
  ca: false,
  uri: 'spiffe://cluster.local/ns/bookinfo/sa/productpage',
});
const chain = `${leaf.pem}\n${inter.pem}\n`;
const bundle = parseX509Bundle('cluster.local', root.pem);
if (!bundle.ok) throw new Error(bundle.reason);
const bundles = new X509BundleSet([bundle.value]);

const policy = await loadPolicy(defaultPolicyLocation());
const logger = pino({ timestamp: pino.stdTimeFunctions.isoTime }, pino.destination({ dest: '/dev/null', sync: false }));
const sink = (entry) => logger.info(entry, 'decision');

function measure(label, chainVerifier) {
  const authorizer = new Authorizer({
    policies: { current: policy },
    sink,
    ...(chainVerifier ? { chainVerifier } : {}),
  });
  const request = { certificatePem: chain, headers: {} };
  const first = authorizer.checkSideband(request);
  if (!first.allow || first.snat_pool !== 'bookinfo_snat')
    throw new Error(`${label}: expected an allow: ${first.reason}`);
  for (let i = 0; i < 2000; i++) authorizer.checkSideband(request);
  return { label, ...bestOfRounds(rounds, () => authorizer.checkSideband(request), 50) };
}

const results = [
  measure('no trust bundles (shape check only)'),
  measure('chain verified, cache off', new ChainVerifier(bundles, { cacheEntries: 0 })),
  measure('chain verified, cache on', new ChainVerifier(bundles)),
];
for (const r of results) console.log(JSON.stringify(r));
logger.flush();
