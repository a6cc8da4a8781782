// A real OpenID provider for tests/console.rs: npm's oidc-provider (certified), on
// loopback, with one confidential client (the console) and accounts made up from the
// login name: `alice` is in group `sre`, anyone else in `dev`. Its development login
// and consent pages take any password. Prints `READY ISSUER` once it listens.
import path from "node:path";
import { pathToFileURL } from "node:url";

const modules = process.env.SLUICE_NODE_MODULES;
const { default: Provider } = await import(
  pathToFileURL(path.join(modules, "oidc-provider", "lib", "index.js")).href
);

const port = Number(process.env.PROVIDER_PORT);
const issuer = `http://127.0.0.1:${port}`;
const groups = (login) => (login === "alice" ? ["sre"] : ["dev"]);

const provider = new Provider(issuer, {
  clients: [{
    client_id: process.env.CLIENT_ID,
    client_secret: process.env.CLIENT_SECRET,
    redirect_uris: [process.env.REDIRECT_URI],
    grant_types: ["authorization_code"],
    response_types: ["code"],
    token_endpoint_auth_method: "client_secret_basic",
  }],
  claims: {
    openid: ["sub"],
    email: ["email", "email_verified"],
    profile: ["preferred_username"],
    groups: ["groups"],
  },
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  features: { devInteractions: { enabled: true } },
  cookies: { keys: ["sluice-test-provider-cookie-key"] },
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        return { sub: id, email: `${id}@example.test`, email_verified: true,
          preferred_username: id, groups: groups(id) };
      },
    };
  },
});

provider.listen(port, "127.0.0.1", () => {
  process.stdout.write(`READY ${issuer}\n`);
});
