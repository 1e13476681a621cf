//! The API client of the CLI: finds the server and a token, and turns the
//! server's JSON errors into messages with hints.

use anyhow::{Context, Result, anyhow};
use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;

use crate::cli::Global;

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    /// The token comes from `--token`/`SLUICE_TOKEN`, else the data directory's initial admin token.
    pub fn new(global: &Global) -> Self {
        let token = global.token.clone().or_else(|| {
            std::fs::read_to_string(
                sluice_spec::Layout::new(&global.data_dir).initial_admin_token(),
            )
            .ok()
            .map(|t| t.trim().to_string())
        });
        Client {
            http: reqwest::Client::new(),
            base: global.server.trim_end_matches('/').to_string(),
            token,
        }
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let request = self
            .http
            .request(method, format!("{}/api/v1{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    pub async fn send(&self, request: RequestBuilder) -> Result<Response> {
        let response = request.send().await.map_err(|e| {
            anyhow!("could not reach the sluice server at {}: {e}\nhint: is `sluice serve` running? Point at it with --server URL or SLUICE_SERVER", self.base)
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let message = body["error"]["message"]
            .as_str()
            .unwrap_or("no details")
            .to_string();
        let mut text = format!("the server answered {status}: {message}");
        if let Some(hint) = body["error"]["hint"].as_str() {
            text.push_str(&format!("\nhint: {hint}"));
        }
        Err(anyhow!(text))
    }

    pub async fn json(&self, request: RequestBuilder) -> Result<Value> {
        let response = self.send(request).await?;
        if response.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        response
            .json()
            .await
            .context("the server's answer is not JSON")
    }

    /// GET with the query parameters that are set (`None`s are left out).
    pub async fn get_with(&self, path: &str, params: &[(&str, Option<String>)]) -> Result<Value> {
        let set: Vec<(&str, &String)> = params
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (*k, v)))
            .collect();
        self.json(self.request(Method::GET, path).query(&set)).await
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.json(self.request(Method::GET, path)).await
    }
}
