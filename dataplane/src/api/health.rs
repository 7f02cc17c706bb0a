//! `GET /v1.0/healthz` (`?appid=`) and `GET /v1.0/healthz/outbound`: 204
//! once the sidecar serves calls, Dapr's 500 before, and, asked about the
//! app with app health checking on, the app's health too.

use std::sync::Arc;

use http::{Response, StatusCode};

use crate::appchannel::AppChannel;
use crate::errors::{code, http_error};
use crate::lifecycle::Lifecycle;
use crate::skiff_body::SkiffBody;

pub struct Health {
    pub app_id: String,
    pub lifecycle: Arc<Lifecycle>,
    /// The app, when its health is checked (`--enable-app-health-check`).
    pub checked_app: Option<Arc<AppChannel>>,
}

impl Health {
    pub fn healthz(&self, query: Option<&str>) -> Response<SkiffBody> {
        let appid = query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("appid=")));
        if let Some(want) = appid
            && want != self.app_id
        {
            return http_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                code::HEALTH_APPID_NOT_MATCH,
                &format!(
                    "app id {want} does not match this sidecar's ({})",
                    self.app_id
                ),
            );
        }
        // Asked about the app (`?appid=`, what registries' health checks
        // call) with app health checking on: an unhealthy app makes the
        // instance unhealthy, so a registry takes it out of rotation.
        if appid.is_some() && self.checked_app.as_ref().is_some_and(|a| !a.is_healthy()) {
            return http_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                code::HEALTH_NOT_READY,
                &format!(
                    "app {} is unhealthy (app health check failing)",
                    self.app_id
                ),
            );
        }
        self.ready()
    }

    /// 204 once the sidecar serves calls, Dapr's 500 before.
    pub fn ready(&self) -> Response<SkiffBody> {
        if self.lifecycle.is_ready() {
            return no_content();
        }
        let why = self.lifecycle.not_ready_reason().map_or_else(
            || "dapr is not ready".to_owned(),
            |r| format!("dapr is not ready: {r}"),
        );
        http_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            code::HEALTH_NOT_READY,
            &why,
        )
    }
}

/// 204, the answer of a call that succeeded with nothing to say.
pub fn no_content() -> Response<SkiffBody> {
    let mut r = Response::new(SkiffBody::Empty);
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}
