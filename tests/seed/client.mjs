// The seed's JavaScript AresClient, verbatim, driven against a running gateway.
class AresClient {
constructor(baseUrl = "https://api.ares.dirmacs.com") {
this.baseUrl = baseUrl;
this.accessToken = null;
this.refreshToken = null;
this.tokenExpiry = 0;
}
async login(email, password) {
const response = await fetch(`${this.baseUrl}/api/auth/login`, {
method: "POST",
headers: { "Content-Type": "application/json" },
body: JSON.stringify({ email, password }),
});
const data = await response.json();
this.accessToken = data.access_token;
this.refreshToken = data.refresh_token;
this.tokenExpiry = Date.now() + data.expires_in * 1000;
}
async ensureValidToken() {
if (Date.now() >= this.tokenExpiry - 30000) {
const response = await fetch(`${this.baseUrl}/api/auth/refresh`, {
method: "POST",
headers: { "Content-Type": "application/json" },
body: JSON.stringify({ refresh_token: this.refreshToken }),
});
const data = await response.json();
this.accessToken = data.access_token;
this.tokenExpiry = Date.now() + data.expires_in * 1000;
}
}
async chat(message, agentType = "product") {
await this.ensureValidToken();
const response = await fetch(`${this.baseUrl}/api/chat`, {
method: "POST",
headers: {
"Authorization": `Bearer ${this.accessToken}`,
"Content-Type": "application/json",
},
body: JSON.stringify({ message, agent_type: agentType }),
});
return response.json();
}
}

const [base, email, password] = process.argv.slice(2);
const c = new AresClient(base);
await c.login(email, password);
const first = await c.chat("Hello");
const before = c.accessToken;
c.tokenExpiry = 0; // let the client refresh, as it would after 15 minutes
const second = await c.chat("Hello again");
console.log(JSON.stringify({ first, second, refreshed: c.accessToken !== before }));
