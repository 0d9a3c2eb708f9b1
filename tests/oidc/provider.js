#!/usr/bin/env node
// Test OpenID Provider for zarrgate CI, built on the certified `oidc-provider` (npm, v9).
//
// Start:   node provider.js            (env below; prints "READY <issuer>" on stdout when listening)
// Env:     OP_PORT       port on 127.0.0.1 (default 0 = pick a free one; the chosen issuer is printed)
//          OP_KEYS_FILE  JSON file holding the private JWKS. If it exists it is reused (restart
//                        with the same keys); if missing, fresh keys are generated and written.
//          OP_AUDIENCE   default `aud` when the client sends no `resource` (default "zarrgate")
//          OP_TTL        access-token lifetime in seconds (default 600)
//
// Non-interactive tokens: client_credentials grant at /token (client_secret_basic or _post).
//   Built-in clients (secret = "<client_id>-secret"):
//     cmip6-user    JWT RS256, groups ["cmip6-restricted"]
//     public-user   JWT RS256, groups []
//     es256-user    JWT ES256, groups ["cmip6-restricted"]
//     eddsa-user    JWT EdDSA (Ed25519), groups ["cmip6-restricted"]
//     opaque-user   opaque token (introspectable/revocable), groups ["cmip6-restricted"]
//     zarrgate      the resource server itself: authenticates to /token/introspection and
//                   /token/revocation (may revoke any token); cannot get tokens
//   Test overrides in the token request body (test OP only!):
//     resource=<absolute URI>   -> becomes the `aud` (RFC 8707); else OP_AUDIENCE
//     audience=<any string>     -> sets `aud` verbatim (wins over resource)
//     groups=a,b                -> replaces the client's default groups claim ("groups=" = none)
//     token_format=jwt|opaque   -> override the client's default format
//     alg=RS256|ES256|EdDSA     -> override the client's default signing alg (JWT only)
//     expires_in=<seconds>      -> override the lifetime (e.g. 1 to test expiry)
//
// Admin (not OIDC, test only):
//   POST /__admin/rotate?keep_old=1   new RSA/EC/OKP keys become the signing keys; old ones stay
//                                      published in the JWKS when keep_old=1, otherwise removed.
//                                      Opaque tokens issued earlier stay valid (shared store).
//   GET  /__admin/health               200 "ok"
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as crypto from 'node:crypto';
import Provider from 'oidc-provider';
import { generateKeyPair, exportJWK } from 'jose';
// oidc-provider's own in-memory store (no `exports` map, so the deep import is allowed). One
// store shared by every Provider instance, so opaque tokens survive a key rotation.
import { createMemoryAdapter } from 'oidc-provider/lib/adapters/memory_adapter.js';

const SharedMemoryAdapter = createMemoryAdapter(0);

const HOST = '127.0.0.1';
const PORT = Number(process.env.OP_PORT ?? 0);
const KEYS_FILE = process.env.OP_KEYS_FILE;
const DEFAULT_AUD = process.env.OP_AUDIENCE ?? 'zarrgate';
const DEFAULT_RESOURCE = 'urn:zarrgate:default-resource'; // RFC 8707 needs an absolute URI
const TTL = Number(process.env.OP_TTL ?? 600);
const ALGS = ['RS256', 'ES256', 'EdDSA'];

async function newKey(alg) {
  const opts = alg === 'EdDSA' ? { crv: 'Ed25519', extractable: true } : { extractable: true };
  const { privateKey } = await generateKeyPair(alg, opts);
  const jwk = await exportJWK(privateKey);
  return { ...jwk, alg, use: 'sig', kid: `${alg.toLowerCase()}-${crypto.randomBytes(6).toString('hex')}` };
}
const newKeySet = () => Promise.all(ALGS.map(newKey));

const CLIENT_DEFAULTS = {
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  token_endpoint_auth_method: 'client_secret_basic',
};
function client(id, extra) {
  return { ...CLIENT_DEFAULTS, client_id: id, client_secret: `${id}-secret`, ...extra };
}
const CLIENTS = [
  client('cmip6-user', { groups: ['cmip6-restricted'], access_token_format: 'jwt', access_token_alg: 'RS256' }),
  client('public-user', { groups: [], access_token_format: 'jwt', access_token_alg: 'RS256' }),
  client('es256-user', { groups: ['cmip6-restricted'], access_token_format: 'jwt', access_token_alg: 'ES256' }),
  client('eddsa-user', { groups: ['cmip6-restricted'], access_token_format: 'jwt', access_token_alg: 'EdDSA' }),
  client('opaque-user', { groups: ['cmip6-restricted'], access_token_format: 'opaque', access_token_alg: 'RS256' }),
  client('zarrgate', { grant_types: [], groups: [], access_token_format: 'opaque', access_token_alg: 'RS256' }),
];
const RS_CLIENT = 'zarrgate';

function bodyParam(ctx, name) {
  const v = ctx.oidc?.body?.[name];
  return typeof v === 'string' ? v : undefined;
}

function buildProvider(issuer, keys) {
  const provider = new Provider(issuer, {
    clients: CLIENTS,
    adapter: SharedMemoryAdapter,
    jwks: { keys },
    extraClientMetadata: {
      properties: ['groups', 'access_token_format', 'access_token_alg'],
      validator() {},
    },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: {
        enabled: true,
        allowedPolicy: async () => true,
      },
      revocation: {
        enabled: true,
        // the token's own client, or the resource server, may revoke
        allowedPolicy: async (ctx, cl, token) => cl.clientId === token.clientId || cl.clientId === RS_CLIENT,
      },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => DEFAULT_RESOURCE,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (ctx, resourceIndicator, cl) => {
          const format = bodyParam(ctx, 'token_format') ?? cl.access_token_format ?? 'jwt';
          const alg = bodyParam(ctx, 'alg') ?? cl.access_token_alg ?? 'RS256';
          const ttl = bodyParam(ctx, 'expires_in');
          const audience = bodyParam(ctx, 'audience')
            ?? (resourceIndicator === DEFAULT_RESOURCE ? DEFAULT_AUD : resourceIndicator);
          return {
            audience,
            scope: 'openid read write',
            accessTokenTTL: ttl ? Number(ttl) : TTL,
            accessTokenFormat: format,
            ...(format === 'jwt' ? { jwt: { sign: { alg } } } : {}),
          };
        },
      },
    },
    extraTokenClaims: async (ctx, token) => {
      const cl = ctx?.oidc?.client;
      const override = bodyParam(ctx, 'groups');
      const groups = override !== undefined
        ? override.split(/[ ,]+/).filter(Boolean)
        : (cl?.groups ?? []);
      return { groups, sub: token.accountId ?? token.clientId };
    },
    ttl: { ClientCredentials: (ctx, token) => token.resourceServer?.accessTokenTTL ?? TTL },
    enabledJWA: {
      idTokenSigningAlgValues: ALGS,
    },
  });
  provider.on('server_error', (ctx, err) => console.error('server_error', err));
  return provider;
}

async function main() {
  let keys;
  if (KEYS_FILE && fs.existsSync(KEYS_FILE)) {
    keys = JSON.parse(fs.readFileSync(KEYS_FILE, 'utf8')).keys;
  } else {
    keys = await newKeySet();
    if (KEYS_FILE) fs.writeFileSync(KEYS_FILE, JSON.stringify({ keys }), { mode: 0o600 });
  }

  let current; // { provider, handler }
  const server = http.createServer((req, res) => {
    if (req.url === '/__admin/health') { res.end('ok'); return; }
    if (req.url.startsWith('/__admin/rotate') && req.method === 'POST') {
      const keepOld = new URL(req.url, 'http://x').searchParams.get('keep_old') === '1';
      newKeySet().then((fresh) => {
        keys = keepOld ? [...fresh, ...keys] : fresh; // first key of an alg signs
        if (KEYS_FILE) fs.writeFileSync(KEYS_FILE, JSON.stringify({ keys }), { mode: 0o600 });
        const provider = buildProvider(current.provider.issuer, keys);
        current = { provider, handler: provider.callback() };
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify({ signing_kids: fresh.map((k) => k.kid), published_kids: keys.map((k) => k.kid) }));
      }, (e) => { res.statusCode = 500; res.end(String(e)); });
      return;
    }
    current.handler(req, res);
  });
  server.listen(PORT, HOST, () => {
    const issuer = `http://${HOST}:${server.address().port}`;
    const provider = buildProvider(issuer, keys);
    current = { provider, handler: provider.callback() };
    console.log(`READY ${issuer}`);
  });
  const stop = () => server.close(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((e) => { console.error(e); process.exit(1); });
