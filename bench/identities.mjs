// Many distinct workload X.509-SVIDs for the warm and cold workloads, fast: one throw-away CA key and
// one shared leaf key, and N leaves that differ in their SPIFFE ID and serial (what tells workloads
// apart to the service; keys are not looked at), shaped as Istio issues them (empty subject, critical
// URI SAN, critical key usage, serverAuth+clientAuth), DER written here and signed with node:crypto
// (~0.1 ms a certificate, where a full X.509 library takes milliseconds). Even-numbered identities are
// in namespace bookinfo (allowed by the default policy), odd ones elsewhere (denied). Cached under the
// git-ignored bench/work/identities so a rerun reuses them; no key is ever written.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { generateKeyPairSync, sign } from 'node:crypto';

const DAY = 86_400_000;
const VALID_DAYS = 7;

export function identityId(i) {
  return i % 2 === 0
    ? `spiffe://cluster.local/ns/bookinfo/sa/workload-${i}`
    : `spiffe://cluster.local/ns/tenant-${i % 7}/sa/workload-${i}`;
}

// --- minimal DER writer -------------------------------------------------------------------------
function length(n) {
  if (n < 0x80) return Buffer.from([n]);
  const bytes = [];
  for (let v = n; v > 0; v >>= 8) bytes.unshift(v & 0xff);
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}
const tlv = (tag, ...content) => {
  const body = Buffer.concat(content);
  return Buffer.concat([Buffer.from([tag]), length(body.length), body]);
};
const seq = (...c) => tlv(0x30, ...c);
const oid = (hex) => tlv(0x06, Buffer.from(hex, 'hex'));
const utf8 = (s) => tlv(0x0c, Buffer.from(s, 'utf8'));
const utcTime = (ms) => {
  const iso = new Date(ms).toISOString();
  return tlv(
    0x17,
    Buffer.from(
      `${iso.slice(2, 4)}${iso.slice(5, 7)}${iso.slice(8, 10)}${iso.slice(11, 13)}${iso.slice(14, 16)}${iso.slice(17, 19)}Z`,
    ),
  );
};
const ext = (oidHex, critical, value) =>
  seq(oid(oidHex), ...(critical ? [Buffer.from([0x01, 0x01, 0xff])] : []), tlv(0x04, value));

const ECDSA_SHA256 = seq(oid('2a8648ce3d040302'));
const ISSUER = seq(
  tlv(0x31, seq(oid('55040a'), utf8('cluster.local'))),
  tlv(0x31, seq(oid('550403'), utf8('bench workloads CA'))),
);

function certificate({ serial, spiffeId, notBefore, notAfter, spki, caKey }) {
  const extensions = [
    ext('551d13', true, seq()),
    ext('551d0f', true, tlv(0x03, Buffer.from([0x05, 0xa0]))),
    ext('551d25', false, seq(oid('2b06010505070301'), oid('2b06010505070302'))),
    ext('551d11', true, seq(tlv(0x86, Buffer.from(spiffeId, 'latin1')))),
  ];
  return signed({ serial, subject: seq(), notBefore, notAfter, spki, caKey, extensions });
}

// The CA itself, self-signed: CA:TRUE, keyCertSign + cRLSign, so the leaves verify against it as a
// trust bundle (bench/cache-bytes.mjs fills the chain-verification cache with them).
function caCertificate({ notBefore, notAfter, spki, caKey }) {
  const extensions = [
    ext('551d13', true, seq(tlv(0x01, Buffer.from([0xff])))),
    ext('551d0f', true, tlv(0x03, Buffer.from([0x01, 0x06]))),
  ];
  return signed({ serial: Buffer.from([0x01]), subject: ISSUER, notBefore, notAfter, spki, caKey, extensions });
}

function signed({ serial, subject, notBefore, notAfter, spki, caKey, extensions }) {
  const tbs = seq(
    tlv(0xa0, tlv(0x02, Buffer.from([2]))),
    tlv(0x02, serial),
    ECDSA_SHA256,
    ISSUER,
    seq(utcTime(notBefore), utcTime(notAfter)),
    subject,
    spki,
    tlv(0xa3, seq(...extensions)),
  );
  const signature = sign('sha256', tbs, { key: caKey, dsaEncoding: 'der' });
  return seq(tbs, ECDSA_SHA256, tlv(0x03, Buffer.from([0]), signature));
}

function pem(der) {
  const lines = der.toString('base64').match(/.{1,64}/g);
  return `-----BEGIN CERTIFICATE-----\n${lines.join('\n')}\n-----END CERTIFICATE-----\n`;
}

/** [{spiffeId, allowed, certPem}] × n, made now or read from the cache when still valid for a day. */
export async function makeIdentities(dir, n) {
  return (await makeIdentitySet(dir, n)).ids;
}

/** makeIdentities' leaves and `caPem`, the certificate of the CA that signed them (a trust bundle). */
export async function makeIdentitySet(dir, n) {
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `identities-${n}.json`);
  if (existsSync(file)) {
    const cached = JSON.parse(readFileSync(file, 'utf8'));
    if (cached.notAfter > Date.now() + DAY && cached.ids.length === n && cached.caPem) return cached;
  }
  const ca = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const leaf = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const spki = leaf.publicKey.export({ type: 'spki', format: 'der' });
  const now = Date.now();
  const notBefore = now - 60_000;
  const notAfter = now + VALID_DAYS * DAY;
  const run = Buffer.alloc(4);
  run.writeUInt32BE(Math.floor(now / 1000));
  const ids = [];
  for (let i = 0; i < n; i++) {
    const spiffeId = identityId(i);
    const index = Buffer.alloc(4);
    index.writeUInt32BE(i);
    // Positive INTEGER: leading byte below 0x80.
    const serial = Buffer.concat([Buffer.from([0x01]), run, index]);
    const der = certificate({ serial, spiffeId, notBefore, notAfter, spki, caKey: ca.privateKey });
    ids.push({ spiffeId, allowed: i % 2 === 0, certPem: pem(der) });
  }
  const caSpki = ca.publicKey.export({ type: 'spki', format: 'der' });
  const caPem = pem(caCertificate({ notBefore, notAfter: notAfter + DAY, spki: caSpki, caKey: ca.privateKey }));
  writeFileSync(file, JSON.stringify({ notAfter, caPem, ids }));
  return { notAfter, caPem, ids };
}
