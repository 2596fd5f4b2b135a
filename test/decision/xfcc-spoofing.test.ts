// Finding 1 of issue 11: with `--trusted-identity-header x-forwarded-client-cert`, the identity came
// from the first `URI=` after splitting at every `,` and `;`, even inside quoted values, and none of the
// X.509-SVID rules ran. The headers below are what Envoy 1.40 writes with SANITIZE_SET and
// set_current_client_cert_details {subject, uri, dns[, cert]} for the certificates named.
import { beforeAll, describe, expect, it } from 'vitest';
import { Authorizer } from '../../src/decision/authorizer.js';
import type { Decision } from '../../src/decision/decision.js';
import { createCa, issue, workloadSvid, KeyUsage, type CertAuthority } from '../support/pki.js';
import { checkRequest, loadDefaultPolicy } from '../support/service.js';

const BOOKINFO = 'spiffe://cluster.local/ns/bookinfo/sa/productpage';
const APIGW = 'spiffe://cluster.local/ns/sm-apigw-a/sa/default';
const GATEWAY = 'spiffe://cluster.local/ns/istio-system/sa/egress-gateway';

let ca: CertAuthority;
beforeAll(async () => {
  ca = await createCa();
});

async function decide(xfcc: string, opts: { trustedProxies?: string[] } = {}): Promise<Decision> {
  const authorizer = new Authorizer({
    policies: { current: await loadDefaultPolicy() },
    sink: () => {},
    trustedIdentityHeader: 'x-forwarded-client-cert',
    ...opts,
  });
  return authorizer.checkEnvoy(checkRequest({ headers: { 'x-forwarded-client-cert': xfcc } }));
}

const cert = (pem: string) => `Cert="${encodeURIComponent(pem)}"`;

describe('x-forwarded-client-cert cannot be spoofed by the certificate text', () => {
  it('a Subject carrying ",URI=<bookinfo>" is not an identity: the element names sm-apigw-a', async () => {
    // RFC 2253 (Envoy's Subject) escapes `,` and `;` with a backslash; the quotes are what protect them.
    for (const subject of [`O=x\\,URI=${BOOKINFO},CN=evil`, `CN=evil,O=x\\;URI=${BOOKINFO}`]) {
      const d = await decide(`Hash=ab12;Subject="${subject}";URI=${APIGW}`);
      expect(d.allow, subject).toBe(false);
      expect(d.identity?.spiffe_id).toBe(APIGW);
    }
  });

  it('a Subject with an escaped quote cannot close the quoted value early', async () => {
    const d = await decide(`Subject="CN=a\\";URI=${BOOKINFO};x=\\"";URI=${APIGW}`);
    expect(d.allow).toBe(false);
    expect(d.identity?.spiffe_id).toBe(APIGW);
  });

  it('a DNS SAN "a,URI=<bookinfo>" (Envoy writes DNS SANs unquoted) is refused', async () => {
    const d = await decide(`Hash=ab12;Subject="CN=evil";URI=${APIGW};DNS=a,URI=${BOOKINFO}`);
    expect(d.allow).toBe(false);
    expect(d.reason).toContain('more than one element');
  });

  it('a DNS SAN "a;URI=<bookinfo>" gives the element a second URI: refused', async () => {
    const d = await decide(`Hash=ab12;Subject="";URI=${APIGW};DNS=a;URI=${BOOKINFO}`);
    expect(d.allow).toBe(false);
    expect(d.reason).toContain('more than one URI');
  });

  it('Cert= is validated as an X.509-SVID: two URI SANs, CA:TRUE or keyCertSign are denied', async () => {
    const twoUris = await issue({ issuer: ca, uris: [BOOKINFO, APIGW] });
    const isCa = await workloadSvid(ca, BOOKINFO, { ca: true });
    const certSign = await workloadSvid(ca, BOOKINFO, {
      keyUsage: KeyUsage.digitalSignature | KeyUsage.keyCertSign,
    });
    for (const c of [isCa, certSign]) {
      const d = await decide(`Hash=ab;${cert(c.certPem)};Subject="";URI=${BOOKINFO}`);
      expect(d.allow, d.reason).toBe(false);
    }
    const d = await decide(`Hash=ab;${cert(twoUris.certPem)};Subject="";URI=${BOOKINFO};URI=${APIGW}`);
    expect(d.allow).toBe(false);
    const noUriPair = await decide(`Hash=ab;${cert(twoUris.certPem)};Subject=""`);
    expect(noUriPair.allow).toBe(false);
    expect(noUriPair.reason).toContain('more than one URI SAN');
  });

  it('a URI= that does not match the Cert= is denied; a matching pair is allowed', async () => {
    const apigw = await workloadSvid(ca, APIGW);
    const bookinfo = await workloadSvid(ca, BOOKINFO);
    const forged = await decide(`Hash=ab;${cert(apigw.certPem)};Subject="";URI=${BOOKINFO}`);
    expect(forged.allow).toBe(false);
    expect(forged.reason).toBe('header SPIFFE ID does not match the header certificate');
    const genuine = await decide(`By=${GATEWAY};Hash=ab;${cert(bookinfo.certPem)};Subject="";URI=${BOOKINFO}`);
    expect(genuine).toMatchObject({ allow: true, snat_pool: 'bookinfo_snat' });
  });

  it('the URI-only form still works for a plain element', async () => {
    expect(await decide(`By=${GATEWAY};Hash=ab;Subject="";URI=${BOOKINFO}`)).toMatchObject({ allow: true });
  });

  it('with trusted proxies, the element must name one of them in By=', async () => {
    const trustedProxies = [GATEWAY];
    expect((await decide(`By=${GATEWAY};URI=${BOOKINFO}`, { trustedProxies })).allow).toBe(true);
    const other = await decide(`By=spiffe://cluster.local/ns/x/sa/y;URI=${BOOKINFO}`, { trustedProxies });
    expect(other.allow).toBe(false);
    expect((await decide(`URI=${BOOKINFO}`, { trustedProxies })).allow).toBe(false);
  });
});
