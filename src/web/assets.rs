//! The console page and the browser client, embedded in the binary: no build step, no CDN.
//! `client.js` is the very file published from `clients/js/`.
use actix_web::HttpResponse;

const CONSOLE_HTML: &str = include_str!("console/index.html");
const CONSOLE_JS: &str = include_str!("console/console.js");
const CLIENT_JS: &str = include_str!("../../clients/js/client.js");
const CLIENT_D_TS: &str = include_str!("../../clients/js/client.d.ts");

fn asset(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        // Short: a new binary's assets reach open consoles on their next load.
        .insert_header(("Cache-Control", "public, max-age=60"))
        .body(body)
}

/// `GET /`: the console.
pub async fn console_html() -> HttpResponse {
    asset("text/html; charset=utf-8", CONSOLE_HTML)
}

/// `GET /console.js`
pub async fn console_js() -> HttpResponse {
    asset("text/javascript; charset=utf-8", CONSOLE_JS)
}

/// `GET /client.js`: the ES module `follow(urlOrJobId, handlers)`.
pub async fn client_js() -> HttpResponse {
    asset("text/javascript; charset=utf-8", CLIENT_JS)
}

/// `GET /client.d.ts`: its types.
pub async fn client_d_ts() -> HttpResponse {
    asset("application/typescript; charset=utf-8", CLIENT_D_TS)
}
