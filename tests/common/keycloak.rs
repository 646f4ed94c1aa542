//! The running Keycloak (`scripts/keycloak.sh start` prints its environment) and its admin
//! REST API, for the suites that need the real Keycloak (all `#[ignore]`d; the slow block
//! of scripts/test.sh runs them).

use serde_json::Value;

use super::http;

pub struct KeycloakAdmin {
    pub base: String,
    pub port: u16,
    admin: String,
    admin_password: String,
}

impl KeycloakAdmin {
    /// From the environment of `scripts/keycloak.sh start`.
    pub fn from_env() -> Self {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("{name} is not set: run `eval \"$(scripts/keycloak.sh start)\"` first, or scripts/test.sh --slow")
            })
        };
        let base = var("POLARS_CLOUD_AUTH_KEYCLOAK_URL");
        let base = base.trim_end_matches('/').to_string();
        let port = base
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("POLARS_CLOUD_AUTH_KEYCLOAK_URL must be http://127.0.0.1:PORT");
        Self {
            base,
            port,
            admin: var("POLARS_CLOUD_AUTH_KEYCLOAK_ADMIN"),
            admin_password: var("POLARS_CLOUD_AUTH_KEYCLOAK_ADMIN_PASSWORD"),
        }
    }

    pub fn issuer(&self) -> String {
        format!("{}/realms/Polars", self.base)
    }

    /// One HTTP exchange with Keycloak: (status, body).
    pub fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String) {
        let reply = http(self.port, method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        (reply.status, reply.body)
    }

    pub fn form(&self, path: &str, form: &[(&str, &str)]) -> (u16, String) {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        self.http(
            "POST",
            path,
            &[("Content-Type", "application/x-www-form-urlencoded")],
            &body,
        )
    }

    pub fn admin_token(&self) -> String {
        let (status, body) = self.form(
            "/realms/master/protocol/openid-connect/token",
            &[
                ("grant_type", "password"),
                ("client_id", "admin-cli"),
                ("username", &self.admin),
                ("password", &self.admin_password),
            ],
        );
        assert_eq!(status, 200, "admin sign-in: {body}");
        serde_json::from_str::<Value>(&body).unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// An admin REST call under /admin/realms/Polars: (status, JSON body or null).
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let bearer = format!("Bearer {}", self.admin_token());
        let (status, reply) = self.http(
            method,
            &format!("/admin/realms/Polars{path}"),
            &[
                ("Authorization", &bearer),
                ("Content-Type", "application/json"),
            ],
            &body.map(|b| b.to_string()).unwrap_or_default(),
        );
        (status, serde_json::from_str(&reply).unwrap_or(Value::Null))
    }

    /// Like `call`, failing on a non-2xx answer.
    pub fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, reply) = self.call(method, path, body);
        assert!(
            (200..300).contains(&status),
            "{method} /admin/realms/Polars{path}: {status} {reply}"
        );
        reply
    }

    /// Client logins of `client_id` among the realm's latest events.
    pub fn client_logins(&self, client_id: &str) -> usize {
        let events = self.admin("GET", "/events?type=CLIENT_LOGIN&max=100", None);
        events
            .as_array()
            .map(|all| all.iter().filter(|e| e["clientId"] == client_id).count())
            .unwrap_or(0)
    }

    /// A confidential client authenticated by "Signed JWT - Federated": assertions from
    /// the identity provider `alias` whose subject is `subject`. A leftover of an earlier
    /// run is replaced.
    pub fn federated_client(&self, client_id: &str, alias: &str, subject: &str) {
        let found = self.admin("GET", &format!("/clients?clientId={client_id}"), None);
        if let Some(uuid) = found[0]["id"].as_str() {
            self.admin("DELETE", &format!("/clients/{uuid}"), None);
        }
        self.admin(
            "POST",
            "/clients",
            Some(serde_json::json!({
                "clientId": client_id,
                "enabled": true,
                "publicClient": false,
                "serviceAccountsEnabled": true,
                "standardFlowEnabled": false,
                "directAccessGrantsEnabled": false,
                "clientAuthenticatorType": "federated-jwt",
                "attributes": {"jwt.credential.issuer": alias, "jwt.credential.sub": subject},
            })),
        );
    }
}
