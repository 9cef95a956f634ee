//! The web dashboard (docs/ui.md): static HTML, CSS and JavaScript embedded in the binary and
//! served at `/ui` without authentication, since they hold no data. The page asks for the API
//! token, keeps it in the tab's sessionStorage and calls the same `/v1` API as the CLI, with
//! `Authorization: Bearer`; everything it shows comes through those authenticated calls.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

/// One embedded file of the dashboard.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const INDEX: &str = "index.html";

const ASSETS: &[Asset] = &[
    Asset {
        name: INDEX,
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("ui/index.html"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("ui/app.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("ui/style.css"),
    },
    Asset {
        name: "icon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("ui/icon.svg"),
    },
];

/// Everything from this server only: no inline script or style, no other origin, no
/// framing. `connect-src 'self'` covers the page's API calls.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'; object-src 'none'";

/// `/` and `/ui` lead to the dashboard; `/ui/` is its page, `/ui/NAME` its files.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(|| async { asset(INDEX) }))
        .route(
            "/ui/{name}",
            get(|Path(name): Path<String>| async move { asset(&name) }),
        )
}

/// The named asset with its type and the dashboard's headers, or a 404.
fn asset(name: &str) -> Response {
    let Some(found) = ASSETS.iter().find(|a| a.name == name) else {
        return super::ApiError::not_found(format!(
            "the dashboard has no file `{name}`: its page is /ui/"
        ))
        .into_response();
    };
    let mut response = (StatusCode::OK, found.body).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, found.content_type),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        // Embedded in the binary: a new binary may bring new files under the same names.
        (header::CACHE_CONTROL, "no-cache"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(response: &Response, name: header::HeaderName) -> &str {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    #[test]
    fn every_asset_has_its_type_and_the_policy() {
        for a in ASSETS {
            let response = asset(a.name);
            assert_eq!(response.status(), StatusCode::OK, "{}", a.name);
            assert_eq!(header(&response, header::CONTENT_TYPE), a.content_type);
            assert_eq!(
                header(&response, header::CONTENT_SECURITY_POLICY),
                CONTENT_SECURITY_POLICY
            );
            assert_eq!(header(&response, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
            assert!(!a.body.is_empty(), "{} is empty", a.name);
        }
    }

    #[test]
    fn unknown_names_are_not_found() {
        for name in ["", "nope.js", "../Cargo.toml", "index.htm", "APP.JS"] {
            assert_eq!(asset(name).status(), StatusCode::NOT_FOUND, "{name:?}");
        }
    }

    #[test]
    fn the_page_loads_only_its_own_files() {
        let page = std::str::from_utf8(ASSETS[0].body).unwrap();
        // No inline script or style (the policy would block them), nothing from elsewhere.
        assert!(!page.contains("<style"), "inline style in index.html");
        assert!(
            !page.contains("style=\""),
            "inline style attribute in index.html"
        );
        assert!(!page.contains("http://") && !page.contains("https://"));
        for reference in ["/ui/app.js", "/ui/style.css", "/ui/icon.svg"] {
            assert!(
                page.contains(reference),
                "index.html does not load {reference}"
            );
        }
        let script = std::str::from_utf8(ASSETS[1].body).unwrap();
        assert!(
            page.matches("<script").count() == page.matches("<script src=").count(),
            "inline script in index.html"
        );
        for forbidden in [
            "eval(",
            "new Function",
            ".innerHTML",
            ".outerHTML",
            "insertAdjacentHTML",
            "localStorage",
            "new EventSource",
        ] {
            assert!(
                !script.contains(forbidden),
                "app.js uses {forbidden} (the token stays in sessionStorage; text goes in as text)"
            );
        }
    }
}
